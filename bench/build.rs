//! Compiles the benchmark's echo service with `protox`; its message is the
//! system's own `csce438.Message`, taken from the `tinysns` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bench.proto");
    let fds = protox::compile(["proto/bench.proto"], ["proto", "../proto"])?;
    tonic_prost_build::configure()
        .extern_path(".csce438", "::tinysns::proto::csce438")
        .compile_fds(fds)?;
    Ok(())
}
