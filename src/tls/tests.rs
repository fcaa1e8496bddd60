//! Loading TLS files: every mistake is one line naming the variable, never a panic.

use super::dev_certs::{self, DevCerts};
use super::{ClientTlsArgs, NodeTls, TlsFile};

fn hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

fn certs() -> (tempfile::TempDir, DevCerts) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_certs::generate(dir.path(), &hosts(), false).unwrap();
    (dir, certs)
}

#[test]
fn generated_certificates_load() {
    let (_dir, certs) = certs();
    assert!(certs.exist());
    NodeTls::load(&certs.node_cert, &certs.node_key, &certs.ca).unwrap();
    assert!(certs.client_args().load().unwrap().tonic().is_some());
    assert!(ClientTlsArgs::default().load().unwrap().tonic().is_none());
}

#[test]
fn generate_refuses_to_overwrite_without_force() {
    let (dir, _certs) = certs();
    let err = dev_certs::generate(dir.path(), &hosts(), false).unwrap_err();
    assert!(err.to_string().contains("exists already"), "{err}");
    dev_certs::generate(dir.path(), &hosts(), true).unwrap();
    assert!(dev_certs::generate(dir.path(), &[], true).is_err());
    assert!(dev_certs::generate(dir.path(), &["bad host!".into()], true).is_err());
}

#[test]
fn each_bad_file_is_one_line_naming_its_variable() {
    let (dir, certs) = certs();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");

    let cases = [
        // (cert, key, ca, the variable blamed)
        (&missing, &certs.node_key, &certs.ca, TlsFile::Cert),
        (&garbage, &certs.node_key, &certs.ca, TlsFile::Cert),
        (&certs.node_cert, &garbage, &certs.ca, TlsFile::Key),
        (&certs.node_cert, &certs.node_cert, &certs.ca, TlsFile::Key),
        (&certs.node_cert, &certs.node_key, &garbage, TlsFile::Ca),
        (
            &certs.node_cert,
            &certs.node_key,
            &certs.node_key,
            TlsFile::Ca,
        ),
        // A key that belongs to another certificate.
        (&certs.node_cert, &certs.client_key, &certs.ca, TlsFile::Key),
    ];
    for (cert, key, ca, blamed) in cases {
        let err = NodeTls::load(cert, key, ca).unwrap_err();
        assert_eq!(err.file, blamed, "{err}");
        let line = err.to_string();
        assert!(line.starts_with(blamed.var()), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

#[test]
fn a_certificate_from_another_ca_or_without_client_auth_is_refused() {
    let (_dir, certs) = certs();
    let (_other_dir, other) = self::certs();
    let err = NodeTls::load(&certs.node_cert, &certs.node_key, &other.ca).unwrap_err();
    assert_eq!(err.file, TlsFile::Cert, "{err}");

    // The CA's own certificate is no node certificate.
    let dir = certs.ca.parent().unwrap();
    let err = NodeTls::load(&certs.ca, &dir.join(dev_certs::CA_KEY), &certs.ca).unwrap_err();
    assert_eq!(err.file, TlsFile::Cert, "{err}");
}

#[test]
fn client_flags_name_the_bad_file() {
    let (dir, certs) = certs();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "junk").unwrap();
    let args = ClientTlsArgs {
        cacert: Some(garbage.clone()),
        cert: None,
        key: None,
    };
    let err = args.load().err().unwrap().to_string();
    assert!(err.starts_with("--cacert"), "{err}");
    let args = ClientTlsArgs {
        cacert: Some(certs.ca.clone()),
        cert: Some(certs.client_cert.clone()),
        key: Some(certs.node_key.clone()),
    };
    let err = args.load().err().unwrap().to_string();
    assert!(err.starts_with("--key"), "{err}");
}
