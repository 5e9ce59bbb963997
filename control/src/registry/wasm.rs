//! Is it WebAssembly? The eight-byte header check that a push passes before
//! anything is stored: the magic `\0asm`, then a version and layer the node
//! runs (a core module, or a component of the component model's current
//! binary version).
//!
//! This is deliberately only the header: the control plane knows nothing of
//! wasmtime, and whether a module compiles or links is the node's to find
//! out (and to report in the pod's status). The header is what tells a
//! Wasm binary from a wrong file (an ELF, a text file, a `.wat`, an OCI
//! tarball) at push time, with a message naming the problem.

/// The Wasm magic number, `\0asm`.
pub const MAGIC: [u8; 4] = *b"\0asm";

/// Bytes of the header this module checks: magic, then version and layer.
pub const HEADER_BYTES: usize = 8;

/// A core module: version 1, layer 0.
const CORE_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// A component: version 0x0d, layer 1, the binary format wasmtime 48
/// reads (earlier pre-release versions are refused by it too).
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];

/// Which kind of Wasm binary a header announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmKind {
    CoreModule,
    Component,
}

/// Why bytes are not a Wasm binary the node can run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotWasm {
    #[error(
        "the module is {size} bytes long, shorter than the {HEADER_BYTES}-byte WebAssembly header"
    )]
    TooShort { size: usize },
    #[error(
        "the module is not WebAssembly: it starts with {found}, not the magic 00 61 73 6d \
         (\"\\0asm\"){hint}"
    )]
    BadMagic { found: String, hint: &'static str },
    #[error(
        "the WebAssembly header has version and layer {found}; Flotilla runs core modules \
         (01 00 00 00) and components (0d 00 01 00)"
    )]
    UnsupportedVersion { found: String },
}

/// Checks the header at the start of `bytes` (at least [`HEADER_BYTES`] of
/// them, or the whole module when it is shorter).
pub fn check_header(bytes: &[u8]) -> Result<WasmKind, NotWasm> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return match bytes.get(..MAGIC.len()) {
            Some(magic) if magic != MAGIC => Err(bad_magic(magic)),
            _ => Err(NotWasm::TooShort { size: bytes.len() }),
        };
    };
    let (magic, version) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(bad_magic(magic));
    }
    match version {
        v if v == CORE_MODULE_VERSION => Ok(WasmKind::CoreModule),
        v if v == COMPONENT_VERSION => Ok(WasmKind::Component),
        other => Err(NotWasm::UnsupportedVersion {
            found: spaced_hex(other),
        }),
    }
}

fn bad_magic(magic: &[u8]) -> NotWasm {
    // The usual wrong files, named, because "not WebAssembly" alone leaves
    // the user guessing which file they gave.
    let hint = match magic {
        [0x7f, b'E', b'L', b'F'] => " (this is an ELF executable: build for wasm32-wasip2)",
        [b'(', ..] | [b';', b';', ..] => {
            " (this looks like WebAssembly text: compile it to binary)"
        }
        [0x1f, 0x8b, ..] => " (this is gzip-compressed)",
        [b'M', b'Z', ..] => " (this is a Windows executable)",
        _ => "",
    };
    NotWasm::BadMagic {
        found: spaced_hex(magic),
        hint,
    }
}

fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(check_header(b"\0asm\x01\0\0\0"), Ok(WasmKind::CoreModule));
        assert_eq!(
            check_header(b"\0asm\x0d\0\x01\0rest"),
            Ok(WasmKind::Component)
        );
        for (bytes, fragment) in [
            (&b"\x7fELF\x02\x01\x01\0"[..], "ELF executable"),
            (b"(module)", "WebAssembly text"),
            (b"#!/bin/sh\necho", "starts with 23 21 2f 62"),
            (b"\0asm\x0a\0\x01\0", "version and layer 0a 00 01 00"),
            (b"\0asm", "4 bytes long"),
            (b"", "0 bytes long"),
            (b"PK\x03", "3 bytes long"),
            (b"PK\x03\x04x", "starts with 50 4b 03 04"),
        ] {
            let error = check_header(bytes).unwrap_err().to_string();
            assert!(error.contains(fragment), "{bytes:?}: {error}");
        }
    }
}
