//! ARCHITECTURE.md kept true by test: the dependency direction (`providers`
//! and `storage` depend on no other tokun crate, `actors` on both, and only
//! the `tokun` edge knows axum), every path the map names, and the source
//! rules it states that a scan can see.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

use cargo_metadata::MetadataCommand;

#[test]
fn crates_depend_in_one_direction() {
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .expect("cargo metadata");
    let deps = |name: &str| -> Vec<String> {
        let package = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .expect(name);
        package
            .dependencies
            .iter()
            .filter(|d| d.kind == cargo_metadata::DependencyKind::Normal)
            .map(|d| d.name.clone())
            .collect()
    };
    for leaf in ["tokun-providers", "tokun-storage"] {
        let tokun_deps: Vec<_> = deps(leaf)
            .into_iter()
            .filter(|d| d.starts_with("tokun"))
            .collect();
        assert!(tokun_deps.is_empty(), "{leaf} depends on {tokun_deps:?}");
    }
    let actors = deps("tokun-actors");
    assert!(actors.contains(&"tokun-providers".to_string()));
    assert!(actors.contains(&"tokun-storage".to_string()));
    assert!(!actors.iter().any(|d| d == "tokun"));
    for crate_name in ["tokun-providers", "tokun-storage", "tokun-actors"] {
        let web: Vec<_> = deps(crate_name)
            .into_iter()
            .filter(|d| d == "axum" || d.starts_with("tower"))
            .collect();
        assert!(
            web.is_empty(),
            "{crate_name} must not know the HTTP server: {web:?}"
        );
    }
    assert!(deps("tokun").contains(&"axum".to_string()));
}

/// Every path ARCHITECTURE.md names exists (STYLE: keep the map true by test).
#[test]
fn every_path_architecture_md_names_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let named = named_paths(&text);
    assert!(named.len() > 40, "the map names its files: {named:?}");
    let missing = missing_paths(&text, root);
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names missing paths: {missing:?}"
    );
}

/// The checker itself fails on a path that does not exist, in a crate's
/// section and outside one, and reads the crate of each section.
#[test]
fn the_path_check_reports_a_missing_path() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = "Intro `src/server.rs` and `src/nowhere.rs`.\n\
               ### `actors/` (`tokun-actors`)\n`stream/embed.rs`, `meter/`, `stream.rs`.\n\
               ### `tests/`\n`tests/holds.rs`, `holds.rs`, `/v1/ws`, `a::b`, `x-ratelimit-*`.\n";
    let missing = missing_paths(doc, root);
    assert_eq!(missing, ["src/nowhere.rs", "stream.rs", "holds.rs"]);
}

/// Source rules ARCHITECTURE.md states that a scan can see.
#[test]
fn the_invariants_a_scan_can_see_hold() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in rust_files(&root.join("actors/src")) {
        let code = without_tests(&std::fs::read_to_string(&file).unwrap());
        for word in ["axum", "StatusCode", "hyper::"] {
            assert!(!code.contains(word), "{} mentions {word}", file.display());
        }
    }
    // One clock: the wall clock is read in `providers/src/clock.rs` only.
    for dir in ["src", "actors/src", "storage/src", "providers/src"] {
        for file in rust_files(&root.join(dir)) {
            if file.ends_with("providers/src/clock.rs") {
                continue;
            }
            let code = std::fs::read_to_string(&file).unwrap();
            assert!(
                !code.contains("SystemTime::now"),
                "{} reads the clock itself",
                file.display()
            );
        }
    }
    // Money fields of tokun's own types are `Nanos`, never a raw integer
    // (Stripe's wire types in `src/stripe/event.rs` carry Stripe's cents).
    for dir in ["src", "actors/src", "storage/src"] {
        for file in rust_files(&root.join(dir)) {
            if file.ends_with("src/stripe/event.rs") {
                continue;
            }
            let code = without_tests(&std::fs::read_to_string(&file).unwrap());
            for line in code.lines() {
                let field = line.trim_start().trim_start_matches("pub ");
                let name = field.split(':').next().unwrap_or_default();
                let money = ["nanos", "cost", "balance", "amount", "price"]
                    .iter()
                    .any(|word| name.ends_with(word));
                let raw = field.ends_with(": i64,") || field.ends_with(": u64,");
                assert!(
                    !(money && raw),
                    "{}: a money field as a raw integer: {line}",
                    file.display()
                );
            }
        }
    }
}

/// Backticked tokens that look like paths, with the base each resolves against.
fn named_paths(text: &str) -> Vec<(String, String)> {
    let mut base = String::new();
    let mut paths = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            base = section_base(heading);
            continue;
        }
        if line.starts_with("## ") {
            base.clear();
        }
        for (i, token) in line.split('`').enumerate() {
            if i % 2 == 1 && looks_like_path(token) {
                paths.push((base.clone(), token.to_owned()));
            }
        }
    }
    paths
}

/// `### \`actors/\` (…)` reads paths in `actors/src/`; other sections the root.
fn section_base(heading: &str) -> String {
    let first = heading.split('`').nth(1).unwrap_or_default();
    match first {
        "src/" => "src/".to_owned(),
        "providers/" | "storage/" | "actors/" | "testkit/" => format!("{first}src/"),
        _ => String::new(),
    }
}

fn looks_like_path(token: &str) -> bool {
    let plain = !token.is_empty()
        && !token.starts_with('/')
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    let extension = [".rs", ".md", ".toml", ".json"]
        .iter()
        .any(|ext| token.ends_with(ext));
    plain && (token.contains('/') || extension)
}

fn missing_paths(text: &str, root: &std::path::Path) -> Vec<String> {
    named_paths(text)
        .into_iter()
        .filter(|(base, path)| !root.join(base).join(path).exists() && !root.join(path).exists())
        .map(|(_, path)| path)
        .collect()
}

fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The code before a file's `#[cfg(test)]` module, without comments, and
/// nothing of test files.
fn without_tests(code: &str) -> String {
    if code.contains("#![allow(clippy::unwrap_used, reason = \"tests") {
        return String::new();
    }
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}
