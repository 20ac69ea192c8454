//! The dependency direction is a rule (STYLE.md #2): `providers` and `storage`
//! depend on no other tokun crate, `actors` on both, and only the `tokun`
//! edge knows axum.

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
