//! The Debian package as an operator installs it: `cargo deb -p portico` (scripts/test.sh
//! builds it before the tests, with the release profile) holds the stripped binary, the
//! systemd units and /etc/portico/portico.toml — the embedded default's content, kept
//! as a conffile — and what it installs runs.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn the_deb() -> PathBuf {
    let dir = root().join("target/debian");
    let version = env!("CARGO_PKG_VERSION");
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("portico_{version}-")) && n.ends_with(".deb")
                })
            })
            .max()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no portico_{version}-*.deb in {}: run `cargo deb -p portico` first (scripts/test.sh does)",
            dir.display()
        )
    })
}

fn dpkg_deb(args: &[&str]) -> String {
    run_ok(Command::new("dpkg-deb").args(args))
}

#[test]
fn the_deb_installs_the_binary_units_and_default_config() {
    let deb = the_deb();
    let deb = deb.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("root");
    let control = dir.path().join("control");
    dpkg_deb(&["-x", deb, files.to_str().unwrap()]);
    dpkg_deb(&["-e", deb, control.to_str().unwrap()]);

    let fields = dpkg_deb(&["-f", deb, "Package", "Version", "Depends", "Section"]);
    assert!(fields.contains("Package: portico"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}-", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(fields.contains("libc6"), "{fields}");

    // the config: the embedded default's content, a conffile (dpkg keeps local edits)
    let config = files.join("etc/portico/portico.toml");
    let default =
        std::fs::read_to_string(root().join("crates/portico-config/src/default.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), default);
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/portico/portico.toml");

    // the units, as dist/systemd has them
    for unit in ["portico.service", "portico.socket"] {
        let installed = ["lib/systemd/system", "usr/lib/systemd/system"]
            .iter()
            .map(|d| files.join(d).join(unit))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{unit} not in the package"));
        assert_eq!(
            std::fs::read(installed).unwrap(),
            std::fs::read(root().join("dist/systemd").join(unit)).unwrap()
        );
    }

    // the binary: stripped of debug info (symbols kept), and it runs the shipped config
    let bin = files.join("usr/bin/portico");
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(&bin)
        .output()
        .unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(sections.contains(".text"), "{sections}");
    assert!(
        !sections.contains(".debug_info"),
        "debug info in the shipped binary"
    );
    run_ok(Command::new(&bin).args(["check", "--config"]).arg(&config));
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("portico {}", env!("CARGO_PKG_VERSION"))
    );
}
