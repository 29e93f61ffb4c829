//! Compiles the `.proto` files with protox, so no system `protoc` is needed.
//!
//! The VEN service is generated with its own codec (`codec::LeanCodec`): a
//! member holds one stream per VEN, thousands of them, and tonic's default
//! per-stream codec buffers would dominate its memory.

fn generate(files: &[&str], codec: Option<&str>) {
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = match protox::compile(files, ["proto"]) {
        Ok(fds) => fds,
        Err(e) => panic!("proto compilation failed: {e}"),
    };
    let mut builder = tonic_prost_build::configure();
    if let Some(path) = codec {
        builder = builder.codec_path(path);
    }
    if let Err(e) = builder.compile_fds(fds) {
        panic!("code generation failed: {e}");
    }
}

fn main() {
    generate(&["proto/raft.proto", "proto/federation.proto"], None);
    generate(&["proto/ven.proto"], Some("crate::codec::LeanCodec"));
}
