//! Compiles `proto/` with the pure-Rust protox compiler (no protoc needed),
//! generates the tonic services and writes the encoded descriptor set that
//! reflection serves and the scope map reads.
//!
//! The descriptor set is written from protox's own encoding: going through
//! prost-types would drop the `agenda.v1.required_scope` method options and
//! the `google.api.field_behavior` field options.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "google/api/field_behavior.proto",
    "agenda/v1/options.proto",
    "agenda/v1/types.proto",
    "agenda/v1/contact.proto",
    "agenda/v1/activity.proto",
    "agenda/v1/task.proto",
    "agenda/v1/change.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=migrations");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;

    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("agenda_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
