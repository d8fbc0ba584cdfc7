//! The credential guard: refuse a build context that carries credential
//! material (the original workflow baked AWS keys into the image).
//!
//! By name: anything under a `.aws/` directory, files named `credentials`,
//! `.env` and `.env.*` (not `.env.example` and the like), `*.pem`, `*.key`,
//! SSH keys (`id_rsa*`, `id_ed25519*`, `id_ecdsa*`, `id_dsa*`),
//! `.docker/config.json`, `.netrc`, `.git-credentials`, `.npmrc`, `.pypirc`.
//! By content (UTF-8, or UTF-16 with a BOM): AWS access key ids (`AKIA`/`ASIA`
//! and 16 more, also after an escaped `\n`), `aws_secret_access_key = <40 chars>`
//! assignments (also `:`, blanks only, `["…"] =`, quotes escaped as in a
//! notebook's JSON) and PEM private keys (`-----BEGIN … PRIVATE KEY-----`).
//!
//! `--build-arg`s are checked by content too, and by name (`*TOKEN*`,
//! `*SECRET*`, `*PASSWORD*`, `*API_KEY`, ...): the classic builder keeps
//! them in the image's history.
//!
//! `image build` refuses such a context; `image context` reports the same
//! findings and exits non-zero, so a reviewer sees them without building.

use std::sync::OnceLock;

use regex::bytes::Regex;

use super::context::{BuildContext, Kind, Source};

/// One file of the context that looks like a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

fn access_key() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // After a word boundary, or an escape (`\n` in a notebook's JSON).
    RE.get_or_init(|| {
        Regex::new(r"(?:\b|\\[nrt])(AKIA|ASIA)[0-9A-Z]{16}\b").expect("a valid regex")
    })
}

fn secret_assignment() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // Between name and value: `=` or `:`, or only blanks (`ENV NAME
        // value`, `aws configure set name value`), after an optional
        // closing quote and bracket (`environ["NAME"] = "value"`). The
        // key's end: not another key character (`\b` fails after a final
        // `/` or `+`).
        // Quotes may be escaped (`\"`: a notebook's or a JSON string's).
        Regex::new(r#"(?i)(aws[_-]secret[_-]access[_-]key|aws_secret_key|secret_access_key|secretaccesskey)(\\?["'])?\]?(\s*[:=]\s*|\s+)(\\?["'])?[A-Za-z0-9/+=]{40}([^A-Za-z0-9/+=]|$)"#)
            .expect("a valid regex")
    })
}

fn private_key() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----").expect("a valid regex")
    })
}

/// Why the path's name alone marks it as a credential, if it does.
pub fn suspicious_name(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.split('/').collect();
    let name = *segs.last()?;
    if segs[..segs.len() - 1].contains(&".aws") {
        return Some("inside an .aws/ directory");
    }
    if name == "credentials" {
        return Some("a file named `credentials`");
    }
    if name == ".env" {
        return Some("an .env file");
    }
    if name.ends_with(".pem") {
        return Some("a .pem key/certificate file");
    }
    // `.env.example` and its kind document the keys, without values.
    let template = [".example", ".sample", ".template", ".dist"]
        .iter()
        .any(|t| name.ends_with(t));
    if name.starts_with(".env.") && !template {
        return Some("an .env.* file");
    }
    if name.ends_with(".key") {
        return Some("a .key file");
    }
    if ["id_rsa", "id_ed25519", "id_ecdsa", "id_dsa"]
        .iter()
        .any(|k| name.starts_with(k))
    {
        return Some("an SSH private key (id_rsa*, id_ed25519*, id_ecdsa*, id_dsa*)");
    }
    if name == "config.json" && segs[..segs.len() - 1].last() == Some(&".docker") {
        return Some("a Docker client config (.docker/config.json holds registry logins)");
    }
    match name {
        ".netrc" => Some("a .netrc file (machine logins)"),
        ".git-credentials" => Some("a .git-credentials file"),
        ".npmrc" => Some("an .npmrc file (registry tokens)"),
        ".pypirc" => Some("a .pypirc file (index passwords)"),
        _ => None,
    }
}

/// Why `bytes` look like they hold AWS credentials, if they do. UTF-16
/// text (a BOM: what Windows PowerShell's `>` writes) is read as such.
pub fn suspicious_content(bytes: &[u8]) -> Option<&'static str> {
    let utf16 = |le: bool| {
        let units = bytes[2..].chunks_exact(2).map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        });
        char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect::<String>()
    };
    let decoded = match bytes {
        [0xFF, 0xFE, ..] => Some(utf16(true)),
        [0xFE, 0xFF, ..] => Some(utf16(false)),
        _ => None,
    };
    let bytes = decoded.as_ref().map_or(bytes, |d| d.as_bytes());
    if access_key().is_match(bytes) {
        return Some("contains an AWS access key id (AKIA…/ASIA…)");
    }
    if secret_assignment().is_match(bytes) {
        return Some("contains an AWS secret access key assignment");
    }
    if private_key().is_match(bytes) {
        return Some("contains a PEM private key");
    }
    None
}

/// The `--build-arg`s that look like credentials: the classic builder
/// records every build argument's value in the image's history, where
/// anyone who can pull the image reads it.
/// By value, and by name: a token or password of any service (`GITHUB_TOKEN`,
/// `HF_TOKEN`, `AWS_SESSION_TOKEN`, `NPM_PASSWORD`, `OPENAI_API_KEY`).
pub fn suspicious_build_args(args: &[(String, String)]) -> Vec<Finding> {
    args.iter()
        .filter_map(|(key, value)| {
            let reason = suspicious_content(format!("{key}={value}").as_bytes())
                .or_else(|| credential_name(key).then_some("is named like a credential"))?;
            Some(Finding {
                path: format!("--build-arg {key}"),
                reason: format!("{reason} (build arguments are kept in the image's history)"),
            })
        })
        .collect()
}

/// Whether a variable's name says it holds a secret.
fn credential_name(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
        .iter()
        .any(|w| key.contains(w))
        || key.ends_with("API_KEY")
        || key.ends_with("ACCESS_KEY")
        || key.ends_with("PRIVATE_KEY")
}

/// Every suspicious file of the context (contents are read from memory when
/// loaded, else from disk; an unreadable file is reported by the tar step).
pub fn scan(ctx: &BuildContext) -> Vec<Finding> {
    let mut findings = Vec::new();
    for e in &ctx.entries {
        if e.kind == Kind::Dir {
            continue;
        }
        if let Some(reason) = suspicious_name(&e.path) {
            findings.push(Finding {
                path: e.path.clone(),
                reason: reason.into(),
            });
            continue;
        }
        let disk;
        let bytes: &[u8] = match &e.source {
            Source::Memory(b) => b,
            Source::Disk(p) => match std::fs::read(p) {
                Ok(b) => {
                    disk = b;
                    &disk
                }
                Err(_) => continue,
            },
            Source::None => continue,
        };
        if let Some(reason) = suspicious_content(bytes) {
            findings.push(Finding {
                path: e.path.clone(),
                reason: reason.into(),
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for p in [
            ".aws/config",
            "home/.aws/credentials",
            "credentials",
            "conf/credentials",
            ".env",
            "sub/.env",
            "key.pem",
            "certs/ca.pem",
            "id_rsa",
            ".ssh/id_rsa.pub",
            // Issue 17, defect 9: these passed.
            ".docker/config.json",
            "home/.docker/config.json",
            ".netrc",
            ".git-credentials",
            ".ssh/id_ed25519",
            "id_ecdsa",
            "tls/server.key",
            ".env.production",
            ".npmrc",
            "sub/.pypirc",
        ] {
            assert!(suspicious_name(p).is_some(), "{p}");
        }
        for p in [
            "src/credentials.rs",
            "aws/config",
            ".envrc",
            "pem",
            "environment",
            "README.md",
            "config.json",
            "docker/config.json",
            "src/key.rs",
            "keys.md",
            ".env.example",
            "app/.env.sample",
            ".env.template",
        ] {
            assert!(suspicious_name(p).is_none(), "{p}");
        }
    }

    #[test]
    fn build_args_that_carry_credentials() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let args = [
            ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
            (
                "KEY_ID".to_string(),
                format!("{}{}", "AKIA", "ABCDEFGHIJKLMNOP"),
            ),
            ("FEATURES".to_string(), "cuda".to_string()),
            ("GITHUB_TOKEN".to_string(), "ghp_x".to_string()),
            ("HF_TOKEN".to_string(), "hf_x".to_string()),
            ("OPENAI_API_KEY".to_string(), "sk-x".to_string()),
            ("CUDA_COMPUTE_CAP".to_string(), "90".to_string()),
        ];
        let found = suspicious_build_args(&args);
        let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "--build-arg AWS_SECRET_ACCESS_KEY",
                "--build-arg KEY_ID",
                "--build-arg GITHUB_TOKEN",
                "--build-arg HF_TOKEN",
                "--build-arg OPENAI_API_KEY"
            ]
        );
        assert!(found.iter().all(|f| !f.to_string().contains(secret)));
    }

    #[test]
    fn contents() {
        // Built at run time so that this source file does not trip the guard.
        let key = format!("{}{}", "AKIA", "ABCDEFGHIJKLMNOP");
        let temp = format!("{}{}", "ASIA", "Q2ZZZZZZZZZZZZZZ");
        let secret = format!(
            "aws_secret_access_key = {}",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        let json = format!(
            r#"{{"SecretAccessKey": "{}"}}"#,
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        );
        // A secret ending in `/` or `+` (`\b` let it pass), and PEM keys.
        let slash = format!(
            "aws_secret_access_key={}",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE/"
        );
        let plus = format!(
            "aws_secret_access_key: {}\n",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKE+"
        );
        // Without `=` or `:`: a Dockerfile's old `ENV` form, the AWS CLI, a
        // Python dict.
        let value = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let env = format!("ENV AWS_SECRET_ACCESS_KEY {value}\n");
        let cli = format!("aws configure set aws_secret_access_key {value}\n");
        let dict = format!("os.environ[\"AWS_SECRET_ACCESS_KEY\"] = \"{value}\"\n");
        let flag = format!("--aws-secret-access-key {value}");
        // A notebook's JSON: escaped quotes, a key after an escaped newline.
        let notebook = format!(r#""os.environ[\"AWS_SECRET_ACCESS_KEY\"] = \"{value}\"\n","#);
        let output = format!(r#""creds:\n{key}""#);
        let pem = |kind: &str| format!("-----BEGIN {kind}PRIVATE KEY-----\nMIIE...\n");
        let (rsa, plain, openssh) = (pem("RSA "), pem(""), pem("OPENSSH "));
        // UTF-16 with a BOM (Windows PowerShell's `>`), little and big endian.
        let line = format!("aws_access_key_id = {key}\r\n");
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(line.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain(line.encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert!(suspicious_content(&le).is_some());
        assert!(suspicious_content(&be).is_some());
        for text in [
            &key,
            &temp,
            &secret,
            &json,
            &format!("id={key}\n"),
            &slash,
            &plus,
            &env,
            &cli,
            &dict,
            &flag,
            &notebook,
            &output,
            &rsa,
            &plain,
            &openssh,
        ] {
            assert!(suspicious_content(text.as_bytes()).is_some(), "{text}");
        }
        // 41 key characters are not a 40-character key.
        let long = format!(
            "aws_secret_access_key={}",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYX"
        );
        assert!(suspicious_content(long.as_bytes()).is_none());
        let public = format!("-----BEGIN {}-----", "PUBLIC KEY");
        assert!(suspicious_content(public.as_bytes()).is_none());
        for text in [
            "AKIA",
            "AKIAshort",
            "aws_secret_access_key = test",
            "set aws_secret_access_key from the credential chain, never here",
            "let x = 1;",
            &format!("X{key}"),
        ] {
            assert!(suspicious_content(text.as_bytes()).is_none(), "{text}");
        }
    }

    #[test]
    fn scan_names_each_file() {
        let key = format!("{}{}", "AKIA", "ABCDEFGHIJKLMNOP");
        let ctx = BuildContext::in_memory(vec![
            ("Dockerfile".into(), b"FROM x".to_vec(), 0o644),
            (
                "conf/app.toml".into(),
                format!("key = \"{key}\"").into_bytes(),
                0o644,
            ),
            (".aws/config".into(), b"[default]".to_vec(), 0o644),
            ("server.pem".into(), b"---".to_vec(), 0o600),
        ]);
        let found: Vec<String> = scan(&ctx).into_iter().map(|f| f.path).collect();
        assert_eq!(found, [".aws/config", "conf/app.toml", "server.pem"]);
    }
}
