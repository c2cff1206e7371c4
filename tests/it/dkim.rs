//! DKIM end to end: keys made by `openssl genpkey`, the record `check-config` prints, messages the
//! daemon sends through a real Postfix read back from Dovecot over IMAP (and `.eml` files), each
//! verified by dkimpy (Debian's `python3-dkim`) against that record; altered after signing, they
//! must fail.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{wait_for, Daemon, Options, BIN};
use crate::mailstack::MailStack;

/// Debian's interpreter, where `python3-dkim` is installed: the `python3` first on PATH may be
/// another one (a pyenv build) without it. Python is only the verifier here, never the daemon.
const PYTHON: &str = "/usr/bin/python3";

/// dkimpy's `verify` with a `dnsfunc` that answers only for the expected record name (so `d=`
/// and `s=` are checked too) with the value given. Prints `pass` or `fail`; dkimpy's reasons go
/// to stderr.
const VERIFY: &str = r#"
import logging, sys
import dkim
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG, format="dkimpy: %(message)s")
path, want, value = sys.argv[1], sys.argv[2].lower(), sys.argv[3].encode()
def dns(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    return value if n.rstrip(".").lower() == want else None
msg = open(path, "rb").read()
print("pass" if dkim.verify(msg, logger=logging.getLogger(), dnsfunc=dns) else "fail")
"#;

#[derive(Clone, Copy, Debug)]
enum Alg {
    Rsa,
    Ed25519,
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A new private key, PKCS#8 PEM as `openssl genpkey` writes it.
fn genkey(path: &Path, alg: Alg) {
    let mut c = Command::new("openssl");
    c.arg("genpkey");
    match alg {
        Alg::Rsa => c.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        Alg::Ed25519 => c.args(["-algorithm", "ED25519"]),
    };
    run(c.arg("-out").arg(path));
}

/// The public key as DKIM publishes it, worked out by openssl (not by our code): RSA as the
/// SubjectPublicKeyInfo DER, Ed25519 as the 32 raw bytes at the end of it.
fn public_b64(key: &Path, alg: Alg) -> String {
    let der = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(key));
    let bytes = match alg {
        Alg::Rsa => &der[..],
        Alg::Ed25519 => &der[der.len() - 32..],
    };
    data_encoding::BASE64.encode(bytes)
}

fn dkim_block(alg: Alg, key_file: &str) -> String {
    let a = match alg {
        Alg::Rsa => "rsa-sha256",
        Alg::Ed25519 => "ed25519-sha256",
    };
    // `[mail.dkim]` after the rest of the harness's config (a TOML table may come later)
    format!(
        "\n[mail.dkim]\ndomain = \"invited.test\"\nselector = \"s2026\"\nalgorithm = \"{a}\"\nkey_file = \"{key_file}\"\n"
    )
}

fn append_config(d: &Daemon, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(&d.config)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `invited check-config` (text, then `--json`) with the daemon's environment: the record's name
/// and value from the JSON, after checking the text line shows the same.
fn check_config_record(d: &Daemon) -> (String, String) {
    let cli = |json: bool| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&d.config);
        if json {
            c.arg("--json");
        }
        c.arg("check-config")
            .envs(d.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        String::from_utf8_lossy(&run(&mut c)).into_owned()
    };
    let v: Value = serde_json::from_str(&cli(true)).unwrap_or_else(|e| panic!("{e}"));
    let name = v["dkim"]["name"].as_str().unwrap_or_default().to_string();
    let value = v["dkim"]["value"].as_str().unwrap_or_default().to_string();
    let text = cli(false);
    let line = format!("{name} TXT \"{value}\"");
    assert!(text.contains(&line), "check-config prints {line}:\n{text}");
    (name, value)
}

/// dkimpy's verdict on `message` with `value` published at `name`: Ok(true) = pass.
fn dkimpy(message: &[u8], name: &str, value: &str) -> (bool, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    f.write_all(message).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(PYTHON)
        .args(["-c", VERIFY])
        .arg(f.path())
        .args([name, value])
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (install python3-dkim; scripts/test does)"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && (stdout == "pass" || stdout == "fail"),
        "the verifier did not run (python3-dkim and python3-nacl installed for {PYTHON}?): {stdout}\n{stderr}"
    );
    (stdout == "pass", stderr)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The message with "Re: " put in front of its Subject (a signed header).
fn alter_subject(raw: &[u8]) -> Vec<u8> {
    let at = find(raw, b"\r\nSubject: ").unwrap_or_else(|| panic!("no Subject")) + 11;
    [&raw[..at], b"Re: ", &raw[at..]].concat()
}

/// The message with one letter of its first body part's text changed.
fn alter_body(raw: &[u8]) -> Vec<u8> {
    let body = find(raw, b"\r\n\r\n").unwrap_or_else(|| panic!("no body")) + 4;
    let part = body + find(&raw[body..], b"\r\n\r\n").unwrap_or_else(|| panic!("no part")) + 4;
    let i = part
        + raw[part..]
            .iter()
            .position(u8::is_ascii_lowercase)
            .unwrap_or_else(|| panic!("no letter in the first part"));
    let mut out = raw.to_vec();
    out[i] = if out[i] == b'z' { b'y' } else { out[i] + 1 };
    out
}

/// What a relay may do without breaking the signature: add an unsigned header on top.
fn add_unsigned_header(raw: &[u8]) -> Vec<u8> {
    [b"X-Relayed-By: mx.example.test\r\n".as_slice(), raw].concat()
}

/// Every message `raw` must verify; altered after signing (a signed header, the body) it must
/// not; with an added unsigned header it still must (the verifier is not just failing on change).
fn assert_signature_holds(raw: &[u8], name: &str, value: &str, what: &str) {
    let (ok, why) = dkimpy(raw, name, value);
    assert!(
        ok,
        "{what}: dkimpy rejects the signature:\n{why}\n{}",
        String::from_utf8_lossy(raw)
    );
    let (ok, why) = dkimpy(&add_unsigned_header(raw), name, value);
    assert!(ok, "{what}: an added unsigned header broke it:\n{why}");
    for (change, altered) in [
        ("Subject altered", alter_subject(raw)),
        ("body altered", alter_body(raw)),
    ] {
        assert_ne!(altered, raw);
        let (ok, _) = dkimpy(&altered, name, value);
        assert!(
            !ok,
            "{what}: {change} after signing, and dkimpy still passes it"
        );
    }
    // the wrong key (or the record under another name) fails too
    let (ok, _) = dkimpy(raw, &format!("other.{name}"), value);
    assert!(!ok, "{what}: verified against a record under another name");
}

/// Sends a test email and an invitation through Postfix; both, read back from Dovecot over IMAP,
/// verify against the record check-config prints, and fail once altered.
fn through_postfix(alg: Alg, credential: bool) {
    let to = "dkim.check@fabrikam.test";
    let ms = MailStack::start(&[to.to_string()]);
    let mut d = Daemon::new(ms.options(false));
    let keys = d.dir.path().join("dkim-keys");
    std::fs::create_dir(&keys).unwrap_or_else(|e| panic!("{e}"));
    let key = keys.join("dkim.pem");
    genkey(&key, alg);
    if credential {
        // as systemd's LoadCredential= would give it
        append_config(&d, &dkim_block(alg, "credential:dkim.pem"));
        d.env = vec![(
            "CREDENTIALS_DIRECTORY".into(),
            keys.to_string_lossy().into_owned(),
        )];
    } else {
        append_config(&d, &dkim_block(alg, &key.to_string_lossy()));
    }
    let (name, value) = check_config_record(&d);
    let k = match alg {
        Alg::Rsa => "rsa",
        Alg::Ed25519 => "ed25519",
    };
    assert_eq!(name, "s2026._domainkey.invited.test");
    assert_eq!(
        value,
        format!("v=DKIM1; k={k}; p={}", public_b64(&key, alg))
    );

    d.spawn();
    let out = d.json(&["send-test-email", to]);
    assert_eq!(out["state"], "sent", "{out}");
    d.invite(to, "Fabrikam");
    d.wait_all_sent(Duration::from_secs(60));
    let raws = wait_for("2 messages over IMAP", Duration::from_secs(60), || {
        let m = ms.read_mailbox(to, "INBOX");
        (m.len() >= 2).then_some(m)
    });
    assert_eq!(raws.len(), 2);
    for raw in &raws {
        // the copy Postfix delivered, not the bytes we handed over
        assert!(find(raw, b"Received: ").is_some(), "not via Postfix");
        let a = match alg {
            Alg::Rsa => b"a=rsa-sha256;".as_slice(),
            Alg::Ed25519 => b"a=ed25519-sha256;".as_slice(),
        };
        assert!(find(raw, a).is_some(), "{}", String::from_utf8_lossy(raw));
        assert_signature_holds(raw, &name, &value, &format!("{alg:?} via Postfix"));
    }
    assert!(
        !d.log().contains("PRIVATE KEY"),
        "the key reached the log:\n{}",
        d.log()
    );
}

#[test]
fn rsa_signed_mail_through_postfix_verifies_and_fails_once_altered() {
    through_postfix(Alg::Rsa, false);
}

#[test]
fn ed25519_signed_mail_from_a_credential_through_postfix_verifies_and_fails_once_altered() {
    through_postfix(Alg::Ed25519, true);
}

fn newest_eml(d: &Daemon, after: usize) -> Vec<u8> {
    let emls = wait_for("a new .eml", Duration::from_secs(20), || {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d.outbox_dir())
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        v.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
        (v.len() > after).then_some(v)
    });
    std::fs::read(&emls[emls.len() - 1]).unwrap_or_else(|e| panic!("{e}"))
}

/// The file transport writes the signed bytes too; the key is read once (at start and reload),
/// not per message: a key file broken later changes nothing until a reload, which is refused.
#[test]
fn eml_files_are_signed_with_a_pkcs1_key_loaded_once() {
    let mut d = Daemon::new(Options::default());
    let pkcs8 = d.dir.path().join("dkim8.pem");
    let key = d.dir.path().join("dkim1.pem");
    genkey(&pkcs8, Alg::Rsa);
    run(Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(&pkcs8)
        .arg("-out")
        .arg(&key));
    let pem = std::fs::read_to_string(&key).unwrap_or_default();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "PKCS#1");
    append_config(&d, &dkim_block(Alg::Rsa, &key.to_string_lossy()));
    let (name, value) = check_config_record(&d);
    assert_eq!(
        value,
        format!("v=DKIM1; k=rsa; p={}", public_b64(&pkcs8, Alg::Rsa))
    );
    // the most verbose log, which must still not hold the key
    d.env = vec![("INVITED_LOG".into(), "trace".into())];
    d.spawn();
    d.json(&["send-test-email", "ops@contoso.test"]);
    let first = newest_eml(&d, 0);
    assert!(first.starts_with(b"DKIM-Signature: "));
    assert_signature_holds(&first, &name, &value, ".eml");

    std::fs::write(&key, "not a key\n").unwrap_or_else(|e| panic!("{e}"));
    d.json(&["send-test-email", "ops@contoso.test"]);
    let second = newest_eml(&d, 1);
    assert_ne!(first, second);
    assert!(
        dkimpy(&second, &name, &value).0,
        "signed with the key loaded at start"
    );

    d.signal("HUP");
    wait_for("the refused reload", Duration::from_secs(10), || {
        d.log().contains("reload refused").then_some(())
    });
    assert!(d.log().contains("mail.dkim.key_file"), "{}", d.log());
    d.json(&["send-test-email", "ops@contoso.test"]);
    let third = newest_eml(&d, 2);
    assert!(dkimpy(&third, &name, &value).0, "the running key kept");
    let log = d.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "a verbose log: {log}"
    );
    let pkcs8_pem = std::fs::read_to_string(&pkcs8).unwrap_or_default();
    for line in pem.lines().chain(pkcs8_pem.lines()) {
        assert!(
            line.starts_with("-----") || !log.contains(line),
            "the key is in the log"
        );
    }
}

/// `serve` with a key that does not load: exit status and stderr, or a panic if it keeps running.
fn serve_fails(d: &Daemon) -> String {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            assert!(!st.success(), "serve exited 0");
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started with a DKIM key that does not load");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dkim_key_that_does_not_load_stops_check_config_and_the_start_naming_the_key() {
    let ed = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ed_key = ed.path().join("ed.pem");
    genkey(&ed_key, Alg::Ed25519);
    let ed_pem = std::fs::read_to_string(&ed_key).unwrap_or_default();
    for (key_file, reason) in [
        ("/nonexistent/dkim.pem".to_string(), "cannot read"),
        (
            ed_key.to_string_lossy().into_owned(),
            "an Ed25519 key, but mail.dkim.algorithm is \"rsa-sha256\"",
        ),
    ] {
        let d = Daemon::new(Options::default());
        append_config(&d, &dkim_block(Alg::Rsa, &key_file));
        let (ok, _, err) = d.cli(&["check-config"]);
        assert!(!ok, "check-config accepted {key_file}");
        for e in [err, serve_fails(&d)] {
            assert!(
                e.contains("mail.dkim.key_file") && e.contains(reason),
                "{key_file}: {e}"
            );
            for line in ed_pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!e.contains(line), "the key is in the error: {e}");
            }
        }
    }
    let d = Daemon::new(Options::default());
    append_config(
        &d,
        &dkim_block(Alg::Rsa, "k.pem").replace("rsa-sha256", "rsa"),
    );
    let (ok, _, err) = d.cli(&["check-config"]);
    assert!(!ok && err.contains("mail.dkim.algorithm"), "{err}");
}
