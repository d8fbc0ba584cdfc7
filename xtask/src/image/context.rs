//! The build context: which files of a directory Docker would receive (moby's
//! `archive.TarWithOptions` walk with `.dockerignore`), and the deterministic
//! tar that carries them (sorted entries, fixed mtime/owner, modes kept).
//!
//! Symlinks are stored as symlinks, never followed, so a loop is harmless.
//! A file hard-linked within the context is sent once, its other names as
//! hard-link entries to the first in walk order (moby's `SeenFiles`), so the
//! image holds one file, as Docker's would.
//! Sockets, FIFOs and devices are left out (moby cannot archive sockets, and
//! nothing in a build context needs the others).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::dockerignore::{MatchInfo, Matcher, PatternError};

/// The default limit on the size of a build context.
pub const DEFAULT_SIZE_LIMIT: u64 = 1 << 30;

/// The mtime of every tar entry (2000-01-01T00:00:00Z): a constant, so that the
/// same tree always gives the same bytes.
pub const FIXED_MTIME: u64 = 946_684_800;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{dir} is not a directory")]
    NotADirectory { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("invalid {}: {source}", path.display())]
    Dockerignore { path: PathBuf, source: PatternError },
    #[error("{} is not valid UTF-8, which build context paths must be: rename it, or exclude it in .dockerignore", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("the symlink {} points to {}, which is not valid UTF-8, as build context paths must be: point it elsewhere, or exclude it in .dockerignore", path.display(), target.display())]
    NonUtf8Target { path: PathBuf, target: PathBuf },
    #[error(
        "the build context is {} (limit {}); the biggest directories: {}. Exclude what the image does not need in .dockerignore, or raise the limit with --max-context-size",
        human_bytes(*total), human_bytes(*limit), biggest.iter().map(|(d, s)| format!("{d}/ ({})", human_bytes(*s))).collect::<Vec<_>>().join(", ")
    )]
    TooLarge {
        total: u64,
        limit: u64,
        biggest: Vec<(String, u64)>,
    },
    #[error("writing the context tar: {0}")]
    Tar(#[source] io::Error),
}

/// What an entry of the context is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File {
        size: u64,
    },
    Symlink {
        target: String,
    },
    /// Another name of a file sent earlier in the context (`target`).
    HardLink {
        target: String,
    },
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Disk(PathBuf),
    Memory(Vec<u8>),
    None,
}

/// One entry of the context (path relative to the context root, `/`-separated).
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub source: Source,
}

/// A build context, in the order it is archived.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    pub entries: Vec<Entry>,
}

/// How to read a context directory.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// The Dockerfile's path within the context: always sent, like `.dockerignore`.
    pub dockerfile: String,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            dockerfile: "Dockerfile".into(),
        }
    }
}

impl BuildContext {
    /// Walk `dir` as the Docker CLI does, honouring its `.dockerignore`.
    pub fn from_dir(dir: &Path, options: &ContextOptions) -> Result<Self, ContextError> {
        if !dir.is_dir() {
            return Err(ContextError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        let matcher = matcher_for(dir, &options.dockerfile)?;
        let mut ctx = BuildContext::default();
        let mut walker = Walker {
            root: dir,
            matcher: &matcher,
            seen: HashMap::new(),
            out: &mut ctx.entries,
        };
        walker.walk("", None)?;
        Ok(ctx)
    }

    /// A context of in-memory files (path, bytes, mode), e.g. a generated
    /// Dockerfile and a prebuilt binary.
    pub fn in_memory(files: Vec<(String, Vec<u8>, u32)>) -> Self {
        let mut files = files;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = files
            .into_iter()
            .map(|(path, bytes, mode)| Entry {
                path,
                kind: Kind::File {
                    size: bytes.len() as u64,
                },
                mode,
                source: Source::Memory(bytes),
            })
            .collect();
        BuildContext { entries }
    }

    /// Every non-directory path, sorted: what `image context --list` prints.
    pub fn files(&self) -> Vec<&str> {
        let mut files: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| e.kind != Kind::Dir)
            .map(|e| e.path.as_str())
            .collect();
        files.sort_unstable();
        files
    }

    /// Total size of the regular files.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| {
                if let Kind::File { size } = e.kind {
                    size
                } else {
                    0
                }
            })
            .sum()
    }

    /// Refuse a context over `limit` bytes, naming its biggest directories.
    pub fn check_size(&self, limit: u64) -> Result<(), ContextError> {
        let total = self.total_size();
        if total <= limit {
            return Ok(());
        }
        // Cumulative size per directory, at depth 1 and 2.
        let mut dirs: BTreeMap<String, u64> = BTreeMap::new();
        for e in &self.entries {
            let Kind::File { size } = e.kind else {
                continue;
            };
            let segs: Vec<&str> = e.path.split('/').collect();
            for depth in 1..segs.len().min(3) {
                *dirs.entry(segs[..depth].join("/")).or_default() += size;
            }
        }
        let mut biggest: Vec<(String, u64)> = dirs.into_iter().collect();
        biggest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        biggest.truncate(5);
        Err(ContextError::TooLarge {
            total,
            limit,
            biggest,
        })
    }

    /// Read every file's bytes into memory (an unreadable file is an error naming it).
    pub fn load(&mut self) -> Result<(), ContextError> {
        for e in &mut self.entries {
            if let Source::Disk(path) = &e.source {
                let bytes = fs::read(path).map_err(|source| ContextError::Unreadable {
                    path: path.clone(),
                    source,
                })?;
                e.kind = Kind::File {
                    size: bytes.len() as u64,
                };
                e.source = Source::Memory(bytes);
            }
        }
        Ok(())
    }

    /// The context as a tar: same entries, same bytes, every time.
    pub fn to_tar(&self) -> Result<Vec<u8>, ContextError> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(FIXED_MTIME);
            header.set_uid(0);
            header.set_gid(0);
            header.set_username("").map_err(ContextError::Tar)?;
            header.set_groupname("").map_err(ContextError::Tar)?;
            header.set_mode(e.mode);
            match &e.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{}/", e.path), io::empty())
                        .map_err(ContextError::Tar)?;
                }
                Kind::Symlink { target } | Kind::HardLink { target } => {
                    header.set_entry_type(match e.kind {
                        Kind::Symlink { .. } => tar::EntryType::Symlink,
                        _ => tar::EntryType::Link,
                    });
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &e.path, target)
                        .map_err(ContextError::Tar)?;
                }
                Kind::File { .. } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    let loaded;
                    let bytes: &[u8] = match &e.source {
                        Source::Memory(b) => b,
                        Source::Disk(path) => {
                            loaded = fs::read(path).map_err(|source| ContextError::Unreadable {
                                path: path.clone(),
                                source,
                            })?;
                            &loaded
                        }
                        Source::None => &[],
                    };
                    header.set_size(bytes.len() as u64);
                    builder
                        .append_data(&mut header, &e.path, bytes)
                        .map_err(ContextError::Tar)?;
                }
            }
        }
        builder.into_inner().map_err(ContextError::Tar)
    }
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The matcher of `dir/.dockerignore`, with the Docker CLI's
/// `TrimBuildFilesFromExcludes`: the Dockerfile and `.dockerignore` are always sent.
pub fn matcher_for(dir: &Path, dockerfile: &str) -> Result<Matcher, ContextError> {
    // Docker matches the cleaned path (`./Dockerfile` is `Dockerfile`).
    let dockerfile = &super::dockerignore::clean(dockerfile);
    let path = dir.join(".dockerignore");
    // Bytes that are not UTF-8 (a Latin-1 comment) are read as Docker
    // reads them, not refused.
    let text = match fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(ContextError::Unreadable { path, source }),
    };
    let dockerignore_error = |source| ContextError::Dockerignore {
        path: path.clone(),
        source,
    };
    let mut matcher = Matcher::from_dockerignore(&text).map_err(dockerignore_error)?;
    if matcher.matches(".dockerignore") {
        matcher.push("!.dockerignore").map_err(dockerignore_error)?;
    }
    if matcher.matches(dockerfile) {
        matcher
            .push(&format!("!{dockerfile}"))
            .map_err(dockerignore_error)?;
    }
    Ok(matcher)
}

/// The walk of one context directory, in moby's (lexical) order.
struct Walker<'a> {
    root: &'a Path,
    matcher: &'a Matcher,
    /// (device, inode) of each multiply-linked file sent, and its first path.
    seen: HashMap<(u64, u64), String>,
    out: &'a mut Vec<Entry>,
}

impl Walker<'_> {
    fn walk(&mut self, rel_dir: &str, parent: Option<&MatchInfo>) -> Result<(), ContextError> {
        let (root, matcher) = (self.root, self.matcher);
        let dir = if rel_dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel_dir)
        };
        let unreadable = |path: &Path, source| ContextError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| unreadable(&dir, e))? {
            let entry = entry.map_err(|e| unreadable(&dir, e))?;
            names.push(entry.file_name());
        }
        names.sort_unstable();
        for name in names {
            let path = dir.join(&name);
            // A name that is not UTF-8 is matched as shown (U+FFFD in its
            // place), and refused only if it is sent: an excluded one is left
            // out, as Docker leaves it.
            let utf8 = name.to_str().is_some();
            let name = name.to_string_lossy();
            let rel = if rel_dir.is_empty() {
                name.into_owned()
            } else {
                format!("{rel_dir}/{name}")
            };
            let meta = fs::symlink_metadata(&path).map_err(|e| unreadable(&path, e))?;
            let (excluded, info) = matcher.matches_using_parent_results(&rel, parent);
            let is_dir = meta.is_dir();
            let sent = |path: &Path| match utf8 {
                true => Ok(()),
                false => Err(ContextError::NonUtf8Path {
                    path: path.to_path_buf(),
                }),
            };
            if excluded {
                if !is_dir || !matcher.has_exclusions() {
                    continue;
                }
                // moby: an excluded directory is still walked when an exception
                // pattern names something inside it (literally, by prefix).
                let dir_slash = format!("{rel}/");
                let rescued = matcher.patterns().iter().any(|p| {
                    p.is_exclusion() && format!("{}/", p.as_str()).starts_with(&dir_slash)
                });
                if rescued {
                    sent(&path)?;
                    self.walk(&rel, Some(&info))?;
                }
                continue;
            }
            sent(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.out.push(Entry {
                    path: rel.clone(),
                    kind: Kind::Dir,
                    mode,
                    source: Source::None,
                });
                self.walk(&rel, Some(&info))?;
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| unreadable(&path, e))?;
                let target = target.into_os_string().into_string().map_err(|t| {
                    ContextError::NonUtf8Target {
                        path: path.clone(),
                        target: t.into(),
                    }
                })?;
                self.out.push(Entry {
                    path: rel,
                    kind: Kind::Symlink { target },
                    mode,
                    source: Source::None,
                });
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = self.seen.get(&(meta.dev(), meta.ino())) {
                        self.out.push(Entry {
                            path: rel,
                            kind: Kind::HardLink {
                                target: first.clone(),
                            },
                            mode,
                            source: Source::None,
                        });
                        continue;
                    }
                    self.seen.insert((meta.dev(), meta.ino()), rel.clone());
                }
                // Like the Docker CLI's ValidateContextDirectory: fail early, naming the file.
                fs::File::open(&path).map_err(|e| unreadable(&path, e))?;
                self.out.push(Entry {
                    path: rel,
                    kind: Kind::File { size: meta.size() },
                    mode,
                    source: Source::Disk(path),
                });
            }
        }
        Ok(())
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parse `1GiB`, `500MiB`, `2G`, `1048576` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        format!("invalid size {text:?}: expected e.g. 2GiB, 500MiB or a number of bytes")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("invalid size unit {other:?} in {text:?}")),
    };
    Ok((num * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        dir
    }

    fn list(dir: &Path) -> Vec<String> {
        BuildContext::from_dir(dir, &ContextOptions::default())
            .unwrap()
            .files()
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn same_tree_same_bytes() {
        let files = [
            ("Dockerfile", "FROM x\n"),
            ("b/c.txt", "c"),
            ("a.txt", "a"),
            ("b/d/e", "e"),
        ];
        let one = tree(&files);
        let two = tree(&files);
        // Different mtimes and creation order must not matter.
        fs::write(two.path().join("a.txt"), "a").unwrap();
        let t1 = BuildContext::from_dir(one.path(), &ContextOptions::default())
            .unwrap()
            .to_tar()
            .unwrap();
        let t2 = BuildContext::from_dir(two.path(), &ContextOptions::default())
            .unwrap()
            .to_tar()
            .unwrap();
        assert_eq!(sha256_hex(&t1), sha256_hex(&t2));
        // And the entries are sorted with the fixed metadata.
        let mut archive = tar::Archive::new(t1.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), FIXED_MTIME);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(
            names,
            ["Dockerfile", "a.txt", "b/", "b/c.txt", "b/d/", "b/d/e"]
        );
    }

    #[test]
    fn modes_are_kept_and_change_the_bytes() {
        let dir = tree(&[("Dockerfile", ""), ("run.sh", "#!/bin/sh\n")]);
        let before = BuildContext::from_dir(dir.path(), &ContextOptions::default())
            .unwrap()
            .to_tar()
            .unwrap();
        fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let after = BuildContext::from_dir(dir.path(), &ContextOptions::default())
            .unwrap()
            .to_tar()
            .unwrap();
        assert_ne!(before, after);
        let mut archive = tar::Archive::new(after.as_slice());
        let modes: Vec<u32> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().mode().unwrap())
            .collect();
        assert_eq!(modes[1], 0o755);
    }

    #[test]
    fn dockerignore_excludes_and_exceptions() {
        let dir = tree(&[
            ("Dockerfile", ""),
            (
                ".dockerignore",
                "target\n*.md\n!README.md\ndocs\n!docs/keep.txt\n",
            ),
            ("README.md", ""),
            ("NOTES.md", ""),
            ("target/debug/x", ""),
            ("docs/keep.txt", ""),
            ("docs/drop.txt", ""),
            ("src/main.rs", ""),
            ("src/notes.md", ""),
        ]);
        assert_eq!(
            list(dir.path()),
            [
                ".dockerignore",
                "Dockerfile",
                "README.md",
                "docs/keep.txt",
                "src/main.rs",
                "src/notes.md"
            ]
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused_only_if_sent() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tree(&[("Dockerfile", "")]);
        // `.dockerignore` with a Latin-1 byte in a comment.
        let mut ignore = b"caf*\n# caf".to_vec();
        ignore.extend([0xe9, b'\n']);
        std::fs::write(dir.path().join(".dockerignore"), ignore).unwrap();
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(dir.path().join(latin1), "x").unwrap();
        assert_eq!(list(dir.path()), [".dockerignore", "Dockerfile"]);
        std::fs::write(dir.path().join(".dockerignore"), "").unwrap();
        let e = BuildContext::from_dir(dir.path(), &ContextOptions::default()).unwrap_err();
        assert!(
            matches!(&e, ContextError::NonUtf8Path { path } if path == &dir.path().join(latin1)),
            "{e}"
        );
        // A symlink whose target is not UTF-8: the target is named, the
        // link's own (fine) name is not what to rename.
        std::fs::remove_file(dir.path().join(latin1)).unwrap();
        std::os::unix::fs::symlink(latin1, dir.path().join("link")).unwrap();
        let e = BuildContext::from_dir(dir.path(), &ContextOptions::default()).unwrap_err();
        assert!(
            matches!(&e, ContextError::NonUtf8Target { path, .. } if path == &dir.path().join("link")),
            "{e}"
        );
        assert!(e.to_string().contains("points to"), "{e}");
    }

    #[test]
    fn dockerfile_and_dockerignore_always_sent() {
        let dir = tree(&[("Dockerfile", ""), (".dockerignore", "*\n"), ("a", "")]);
        assert_eq!(list(dir.path()), [".dockerignore", "Dockerfile"]);
        // Named as `./Dockerfile`: the same file.
        let opts = ContextOptions {
            dockerfile: "./Dockerfile".into(),
        };
        assert_eq!(
            BuildContext::from_dir(dir.path(), &opts).unwrap().files(),
            [".dockerignore", "Dockerfile"]
        );
    }

    #[test]
    fn wildcard_exception_does_not_rescue_an_excluded_directory() {
        // moby only walks into an excluded directory when an exception names it literally.
        let dir = tree(&[
            ("Dockerfile", ""),
            (".dockerignore", "docs\n!*/keep.txt\n"),
            ("docs/keep.txt", ""),
        ]);
        assert_eq!(list(dir.path()), [".dockerignore", "Dockerfile"]);
    }

    #[test]
    fn symlinks_are_stored_not_followed() {
        let dir = tree(&[("Dockerfile", ""), ("d/f", "x")]);
        symlink("..", dir.path().join("d/loop")).unwrap();
        symlink("/etc/passwd", dir.path().join("abs")).unwrap();
        let ctx = BuildContext::from_dir(dir.path(), &ContextOptions::default()).unwrap();
        assert_eq!(ctx.files(), ["Dockerfile", "abs", "d/f", "d/loop"]);
        let tar = ctx.to_tar().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let link = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("loop"))
            .unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(link.link_name().unwrap().unwrap().to_str(), Some(".."));
    }

    #[test]
    fn hard_links_are_sent_once() {
        let dir = tree(&[
            ("Dockerfile", ""),
            (".dockerignore", "a.bin\n"),
            ("a.bin", "payload"),
        ]);
        let p = dir.path();
        fs::create_dir(p.join("d")).unwrap();
        fs::hard_link(p.join("a.bin"), p.join("d/b.bin")).unwrap();
        fs::hard_link(p.join("a.bin"), p.join("d/c.bin")).unwrap();
        let ctx = BuildContext::from_dir(p, &ContextOptions::default()).unwrap();
        // a.bin is excluded, so d/b.bin, the first name sent, carries the
        // bytes; the size counts them once (and .dockerignore's six).
        assert_eq!(ctx.total_size(), 7 + 6);
        let tar = ctx.to_tar().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.size().unwrap(),
                    link,
                )
            })
            .filter(|(path, ..)| path.starts_with("d/"))
            .collect();
        assert_eq!(
            entries,
            [
                ("d/".into(), tar::EntryType::Directory, 0, None),
                ("d/b.bin".into(), tar::EntryType::Regular, 7, None),
                (
                    "d/c.bin".into(),
                    tar::EntryType::Link,
                    0,
                    Some("d/b.bin".into())
                ),
            ]
        );
        // What the engine unpacks is one file under two names.
        let out = tempfile::tempdir().unwrap();
        tar::Archive::new(tar.as_slice())
            .unpack(out.path())
            .unwrap();
        let (b, c) = (
            fs::metadata(out.path().join("d/b.bin")).unwrap(),
            fs::metadata(out.path().join("d/c.bin")).unwrap(),
        );
        assert_eq!((b.ino(), b.nlink()), (c.ino(), 2));
        assert_eq!(fs::read(out.path().join("d/c.bin")).unwrap(), b"payload");
    }

    #[test]
    fn size_limit_names_biggest_directories() {
        let dir = tree(&[
            ("Dockerfile", ""),
            ("small/a", "x"),
            ("big/data/blob", &"y".repeat(5000)),
        ]);
        let ctx = BuildContext::from_dir(dir.path(), &ContextOptions::default()).unwrap();
        let err = ctx.check_size(1000).unwrap_err().to_string();
        assert!(
            err.contains("big/ (4.9 KiB)") && err.contains("big/data/"),
            "{err}"
        );
        ctx.check_size(10_000).unwrap();
    }

    #[test]
    fn bad_dockerignore_is_an_error() {
        let dir = tree(&[("Dockerfile", ""), (".dockerignore", "[\n")]);
        let err = BuildContext::from_dir(dir.path(), &ContextOptions::default()).unwrap_err();
        assert!(matches!(err, ContextError::Dockerignore { .. }), "{err}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("lots").is_err());
    }
}
