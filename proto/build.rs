//! Compiles the `.proto` files with protox, so no system `protoc` is needed.
//!
//! The VEN service is generated with its own codec (`codec::LeanCodec`): a
//! member holds one stream per VEN, thousands of them, and tonic's default
//! per-stream codec buffers would dominate its memory.

fn generate(files: &[&str], codec: Option<&str>) {
    generate_into(files, codec, None);
}

/// Generates into `OUT_DIR/<sub>` when given: a recorded older protocol has
/// the same package name as today's, so its code needs its own directory.
fn generate_into(files: &[&str], codec: Option<&str>, sub: Option<&str>) {
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
    if let Some(sub) = sub {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join(sub);
        if let Err(e) = std::fs::create_dir_all(&out) {
            panic!("creating {}: {e}", out.display());
        }
        builder = builder.out_dir(out).build_server(false);
    }
    if let Err(e) = builder.compile_fds(fds) {
        panic!("code generation failed: {e}");
    }
}

fn main() {
    generate(&["proto/raft.proto", "proto/federation.proto"], None);
    generate(&["proto/ven.proto"], Some("crate::codec::LeanCodec"));
    generate_into(
        &["proto/compat/ven-protocol-1.proto"],
        Some("crate::codec::LeanCodec"),
        Some("compat"),
    );
}
