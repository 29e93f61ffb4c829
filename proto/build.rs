//! Compiles the `.proto` files with protox, so no system `protoc` is needed.

fn main() {
    let files = [
        "proto/raft.proto",
        "proto/federation.proto",
        "proto/ven.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = match protox::compile(files, ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("proto compilation failed: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure().compile_fds(fds) {
        panic!("code generation failed: {e}");
    }
}
