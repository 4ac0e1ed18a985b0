//! The layering ARCHITECTURE.md promises, checked on the sources: a
//! service's `domain` rules and its `store` know nothing of the wire, so
//! neither imports `parley_proto` (only handlers and clients do), and no
//! service depends on another.

use std::path::{Path, PathBuf};

const SERVICES: [&str; 5] = ["gateway", "message", "notification", "presence", "receipt"];

fn services_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../services")
}

/// Every `.rs` file at or under `path`.
pub(crate) fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .flat_map(|entry| rust_files(&entry.path()))
        .filter(|file| file.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    files
}

#[test]
fn domain_and_store_modules_never_import_the_wire_types() {
    let mut checked = 0;
    let mut offenders = Vec::new();
    for service in SERVICES {
        let src = services_dir().join(service).join("src");
        for layer in ["domain.rs", "domain", "store.rs", "store"] {
            for file in rust_files(&src.join(layer)) {
                checked += 1;
                let text = std::fs::read_to_string(&file).expect("readable source");
                if text.contains("parley_proto") {
                    offenders.push(file.display().to_string());
                }
            }
        }
    }
    // message, presence and receipt have both layers; notification a store.
    assert!(checked >= 10, "only {checked} domain and store files found");
    assert!(offenders.is_empty(), "import parley_proto: {offenders:?}");
}

#[test]
fn no_service_depends_on_another() {
    for service in SERVICES {
        let manifest = services_dir().join(service).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("manifest");
        let (dependencies, _) = text
            .split_once("[dev-dependencies]")
            .unwrap_or((text.as_str(), ""));
        for other in SERVICES.iter().filter(|other| **other != service) {
            assert!(
                !dependencies.contains(&format!("parley-{other}")),
                "parley-{service} depends on parley-{other}"
            );
        }
    }
}
