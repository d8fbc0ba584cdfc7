//! The only place xtask runs git: the revision a build or job comes from
//! (commit, commit time, dirty state, source URL), the uncommitted changes a
//! pin hashes, worktrees of older commits and the files they track, `git
//! archive` of HEAD, and what changed between two commits (`experiment
//! diff`).
//!
//! Every call goes through xshell's `cmd!`, which passes each interpolated
//! value as one argument, and through [`run`], so every failure names the
//! command, the repository and the fix.

use std::path::Path;
use std::process::Output;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd, Shell};

/// The revision of a working tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Full commit id of HEAD.
    pub commit: String,
    /// Commit time of HEAD, RFC 3339 in UTC (`2024-05-01T12:00:00Z`).
    pub commit_time: String,
    /// Whether tracked or untracked (not ignored) files differ from HEAD,
    /// or a tracked file git is told not to look at is in the work tree
    /// ([`hidden_files`]).
    pub dirty: bool,
    /// `origin`'s URL without credentials, if there is one.
    pub source: Option<String>,
}

impl Revision {
    /// The 12-character commit id used in tags.
    pub fn short(&self) -> &str {
        &self.commit[..12.min(self.commit.len())]
    }
}

/// Runs `cmd`, a git command on `repo`, quietly, with `TZ=UTC` (for
/// `format-local` dates) and in the C locale; its output whatever its exit status. The error, when
/// git cannot be started, names the command and says to install git.
fn run(cmd: Cmd<'_>, repo: &Path) -> Result<Output> {
    let shown = cmd.to_string();
    // Git's messages in English, which `revision` and `read_bytes` read.
    cmd.env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env("LANGUAGE", "C")
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| {
            format!(
                "running `{shown}` for {}: is git installed and on PATH? (`apt-get install git`)",
                repo.display()
            )
        })
}

/// `cmd`'s stdout, trimmed; `None` when git exits non-zero.
fn read_if_ok(cmd: Cmd<'_>, repo: &Path) -> Result<Option<String>> {
    let out = run(cmd, repo)?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// `cmd`'s stdout; an error naming the command, `repo`, git's message and
/// the fix when git exits non-zero.
fn read_bytes(cmd: Cmd<'_>, repo: &Path) -> Result<Vec<u8>> {
    let shown = cmd.to_string();
    let out = run(cmd, repo)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if stderr.to_lowercase().contains("not a git repository") {
        // git diff follows its one-line reason with its whole usage text.
        let reason = stderr.lines().next().unwrap_or_default();
        bail!(
            "{} is not in a git repository (`{shown}`: {reason}): run xtask in a git clone of the workspace",
            repo.display()
        );
    }
    bail!("`{shown}` failed in {}: {stderr}", repo.display())
}

fn shell() -> Result<Shell> {
    Shell::new().context("reading the current directory to start git")
}

/// The revision of the git work tree containing `dir`; `None` when `dir` is not
/// in a git repository or the repository has no commit yet.
pub fn revision(dir: &Path) -> Result<Option<Revision>> {
    let sh = shell()?;
    let git = |cmd: Cmd<'_>| read_if_ok(cmd, dir);
    let head = run(
        cmd!(sh, "git -C {dir} rev-parse --verify --quiet HEAD"),
        dir,
    )?;
    if !head.status.success() {
        // No commit yet (`--quiet`: exit 1, silent), or no repository: no
        // revision. Anything else (a repository owned by another user,
        // which git refuses as "dubious ownership") is git's to say.
        let stderr = String::from_utf8_lossy(&head.stderr);
        let stderr = stderr.trim();
        if stderr.is_empty() || stderr.to_lowercase().contains("not a git repository") {
            return Ok(None);
        }
        bail!(
            "git cannot read the repository at {}: {stderr}",
            dir.display()
        );
    }
    let commit = String::from_utf8_lossy(&head.stdout).trim().to_string();
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "unexpected commit id {commit:?} from git rev-parse HEAD in {}",
            dir.display()
        );
    }
    let commit_time = git(cmd!(
        sh,
        "git -C {dir} show -s --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ HEAD"
    ))?
    .with_context(|| format!("reading the commit time of HEAD in {}", dir.display()))?;
    let status = read_bytes(
        cmd!(
            sh,
            "git -C {dir} status --porcelain --untracked-files=normal -- ."
        ),
        dir,
    )?;
    let source = git(cmd!(sh, "git -C {dir} remote get-url origin"))?
        .filter(|s| !s.is_empty())
        .map(|s| strip_credentials(&s));
    let dirty = !status.is_empty() || !hidden_files(dir)?.is_empty();
    Ok(Some(Revision {
        commit,
        commit_time,
        dirty,
        source,
    }))
}

/// Tracked files git is told not to look at (`update-index
/// --assume-unchanged`, `--skip-worktree`) whose work tree copy is not the
/// index's: `git status` and `git diff` call them unchanged whatever they
/// hold, so a pin cannot take their word. Paths from the top of the work
/// tree. A skip-worktree file not in the work tree (a sparse checkout's)
/// is no change; an assume-unchanged one is (deleted).
fn hidden_files(dir: &Path) -> Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let sh = shell()?;
    // `-v`: a tag letter per file, `S` for skip-worktree, lower case for
    // assume-unchanged; `-s`: `MODE BLOB STAGE\tPATH` after it.
    let listed = read_bytes(
        cmd!(sh, "git -C {dir} ls-files -z -v -s --full-name -- :/"),
        dir,
    )?;
    struct Hidden<'a> {
        path: &'a [u8],
        sparse: bool,
        mode: &'a [u8],
        blob: &'a [u8],
    }
    let hidden: Vec<Hidden> = listed
        .split(|&b| b == 0)
        .filter_map(|e| {
            let sparse = match e.first()? {
                b'S' => true,
                t if t.is_ascii_lowercase() => false,
                _ => return None,
            };
            let rest = e.get(2..)?;
            let (head, path) = rest.split_at(rest.iter().position(|&b| b == b'\t')?);
            let mut fields = head.split(|&b| b == b' ');
            let (mode, blob) = (fields.next()?, fields.next()?);
            Some(Hidden {
                path: &path[1..],
                sparse,
                mode,
                blob,
            })
        })
        .collect();
    if hidden.is_empty() {
        return Ok(Vec::new());
    }
    let top = read_bytes(cmd!(sh, "git -C {dir} rev-parse --show-toplevel"), dir)?;
    let top = Path::new(std::ffi::OsStr::from_bytes(top.trim_ascii_end())).to_path_buf();
    let file_mode = read_if_ok(
        cmd!(sh, "git -C {dir} config --type=bool core.fileMode"),
        dir,
    )?
    .is_none_or(|v| v != "false");
    let mut changed = Vec::new();
    // Regular files, hashed in one call as git would store them (filters
    // and all), against the index's blobs.
    let mut files: Vec<(&Hidden, std::path::PathBuf)> = Vec::new();
    for h in &hidden {
        let path = top.join(std::ffi::OsStr::from_bytes(h.path));
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) if h.sparse => continue,
            Err(_) => {
                changed.push(h.path.to_vec());
                continue;
            }
        };
        let same = if meta.is_symlink() {
            let target = std::fs::read_link(&path)?;
            let blob = cmd!(sh, "git -C {top} hash-object --stdin")
                .stdin(target.as_os_str().as_bytes())
                .quiet()
                .read()
                .with_context(|| format!("hashing the link {}", path.display()))?;
            h.mode == b"120000" && blob.as_bytes() == h.blob
        } else if meta.is_file() {
            // The owner's execute bit, as git reads it, unless the repository
            // says modes mean nothing here (core.fileMode=false).
            let exec = meta.permissions().mode() & 0o100 != 0;
            let mode_ok =
                !file_mode || h.mode == if exec { &b"100755"[..] } else { &b"100644"[..] };
            if mode_ok && h.mode != b"120000" {
                files.push((h, path)); // compared below, in one call
                continue;
            }
            false
        } else {
            // A directory: a submodule's (not compared), or where a file was.
            h.mode == b"160000"
        };
        if !same {
            changed.push(h.path.to_vec());
        }
    }
    if !files.is_empty() {
        let paths: Vec<&std::path::PathBuf> = files.iter().map(|(_, p)| p).collect();
        let out = read_bytes(cmd!(sh, "git -C {top} hash-object -- {paths...}"), &top)?;
        let blobs: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        for (i, (h, _)) in files.iter().enumerate() {
            if blobs.get(i) != Some(&h.blob) {
                changed.push(h.path.to_vec());
            }
        }
    }
    Ok(changed)
}

/// The uncommitted changes of the repository at `root`, as a pin hashes them:
/// `git diff HEAD --binary` in git's default form whatever the user's
/// config says (see [`DIFF_AS_DEFAULT`]), then one line per untracked (not ignored) file,
/// from `git ls-files --others --exclude-standard`, and per tracked file git
/// is told not to look at ([`hidden_files`]): its path from the top of
/// the work tree, a NUL, and the sha256 of its contents (a symlink's: of its
/// target), so that editing an untracked source file changes the pin as
/// editing a tracked one does.
pub fn uncommitted(root: &Path) -> Result<[Vec<u8>; 2]> {
    use std::os::unix::ffi::OsStrExt;
    let sh = shell()?;
    let diff = read_bytes(
        cmd!(
            sh,
            "git -C {root} -c core.quotePath=true -c diff.suppressBlankEmpty=false -c core.attributesFile=/dev/null diff HEAD --binary {DIFF_AS_DEFAULT...}"
        )
        // Nor the machine's attributes (the repository's own still apply).
        .env("GIT_ATTR_NOSYSTEM", "1"),
        root,
    )?;
    let top = read_bytes(cmd!(sh, "git -C {root} rev-parse --show-toplevel"), root)?;
    let top = Path::new(std::ffi::OsStr::from_bytes(top.trim_ascii_end()));
    let names = read_bytes(
        cmd!(
            sh,
            "git -C {root} ls-files -z --full-name --others --exclude-standard -- :/"
        ),
        root,
    )?;
    let hidden = hidden_files(root)?;
    let mut untracked = Vec::new();
    let names = names.split(|&b| b == 0).filter(|n| !n.is_empty());
    for name in names.chain(hidden.iter().map(Vec::as_slice)) {
        let (digest, exec) = content_pin(&top.join(std::ffi::OsStr::from_bytes(name)))?;
        untracked.extend_from_slice(name);
        untracked.push(0);
        untracked.extend_from_slice(digest.as_bytes());
        // An executable file hashes apart from the same bytes without: a
        // marked file whose mode alone changed is a change of its own.
        if exec {
            untracked.extend_from_slice(b"\0x");
        }
        untracked.push(b'\n');
    }
    Ok([diff, untracked])
}

/// `git diff` options that give its default output whatever the user's or
/// the repository's config says: a pin's hash must be the tree's, not the
/// user's diff tool's (an external diff or textconv that prints "binary
/// file changed" for any edit would give two trees one hash) or their
/// taste in colour, prefixes, context or algorithm (one tree, two hashes).
/// Blob ids are whole: an abbreviated one's length follows `core.abbrev`
/// and, by default, the repository's size.
const DIFF_AS_DEFAULT: [&str; 15] = [
    "--no-ext-diff",
    "--no-textconv",
    "--no-color",
    "--no-relative",
    "--src-prefix=a/",
    "--dst-prefix=b/",
    "--unified=3",
    "--inter-hunk-context=0",
    "--diff-algorithm=myers",
    "--indent-heuristic",
    "--find-renames",
    "--ignore-submodules=none",
    "--submodule=short",
    "-O/dev/null",
    "--full-index",
];

/// How a pin hashes an untracked (or marked) entry: the sha256 (hex) of a
/// file's bytes, a symlink's target, or a fixed word for what has neither
/// (a nested repository, listed as its directory), and whether it is a
/// file git commits as executable (the owner's bit, as git reads it).
fn content_pin(path: &Path) -> Result<(String, bool)> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let reading = || format!("reading the untracked file {} to pin it", path.display());
    let meta = match std::fs::symlink_metadata(path) {
        // Deleted since git listed it, or an assume-unchanged file deleted.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((hex::encode(Sha256::digest(b"absent")), false));
        }
        other => other.with_context(reading)?,
    };
    if meta.is_file() {
        let (_, sha256) = sca_data::manifest::hash_file(path).with_context(reading)?;
        return Ok((sha256, meta.permissions().mode() & 0o100 != 0));
    }
    let described = if meta.is_symlink() {
        let target = std::fs::read_link(path).with_context(reading)?;
        [b"symlink:", target.as_os_str().as_bytes()].concat()
    } else {
        b"not a file".to_vec()
    };
    Ok((hex::encode(Sha256::digest(&described)), false))
}

/// Checks out `commit` of the repository at `root` into `dir`, detached
/// (`git worktree add --force --detach`).
pub fn add_worktree(root: &Path, dir: &Path, commit: &str) -> Result<()> {
    let sh = shell()?;
    read_bytes(
        cmd!(
            sh,
            "git -C {root} worktree add --force --detach {dir} {commit}"
        ),
        root,
    )
    .with_context(|| {
        format!("cannot check out commit {commit}: is it in this repository? (`git fetch` it)")
    })?;
    Ok(())
}

/// The files git tracks in the work tree at `dir` (`git ls-files -z`),
/// relative to it.
pub fn tracked_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let sh = shell()?;
    let names = read_bytes(cmd!(sh, "git -C {dir} ls-files -z"), dir)?;
    Ok(names
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| std::ffi::OsStr::from_bytes(n).into())
        .collect())
}

/// A fresh clone of the repository at `root` in `dest` (a new directory),
/// checked out at `rev`, detached: what a new user starts from.
pub fn clone_at(root: &Path, dest: &Path, rev: &str) -> Result<()> {
    let sh = shell()?;
    read_bytes(
        cmd!(
            sh,
            "git clone --quiet --no-hardlinks --no-checkout {root} {dest}"
        ),
        root,
    )?;
    read_bytes(
        cmd!(sh, "git -C {dest} checkout --quiet --detach {rev}"),
        root,
    )
    .with_context(|| format!("cannot check out {rev}: is it a commit of this repository?"))?;
    Ok(())
}

/// `git archive --format=tar HEAD` of the repository at `root`: the committed
/// tree only, as a tar archive.
pub fn archive_head(root: &Path) -> Result<Vec<u8>> {
    let sh = shell()?;
    read_bytes(cmd!(sh, "git -C {root} archive --format=tar HEAD"), root)
}

/// Whether the repository at `root` holds `commit` (`git cat-file -e`).
pub fn has_commit(root: &Path, commit: &str) -> Result<bool> {
    let sh = shell()?;
    let object = format!("{commit}^{{commit}}");
    Ok(read_if_ok(cmd!(sh, "git -C {root} cat-file -e {object}"), root)?.is_some())
}

/// `git diff --stat A B` in the repository at `root`: which files changed
/// between two commits, and by how many lines.
pub fn diff_stat(root: &Path, a: &str, b: &str) -> Result<String> {
    let sh = shell()?;
    let out = read_bytes(cmd!(sh, "git -C {root} diff --stat {a} {b} --"), root)?;
    Ok(String::from_utf8_lossy(&out).trim_end().to_string())
}

/// `https://user:token@host/x` → `https://host/x`: the user information is
/// the authority (up to the first `/`) through its last `@`. A token holding
/// `/` (`https://u:ab/cd@host/x`, which git accepts unencoded) leaves no `@`
/// in that authority; then a `user:` before the URL's last `@` marks one,
/// and everything through that `@` goes. The result goes into a label anyone
/// who pulls the image reads, so when in doubt more is cut, never less.
pub fn strip_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    if let Some((_, host)) = authority.rsplit_once('@') {
        return match path {
            Some(path) => format!("{scheme}://{host}/{path}"),
            None => format!("{scheme}://{host}"),
        };
    }
    match rest.rsplit_once('@') {
        Some((userinfo, after)) if authority.contains(':') && userinfo.contains(':') => {
            format!("{scheme}://{after}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Repo;
    use super::*;

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(
            strip_credentials("https://u:ab/cd@host/r.git"),
            "https://host/r.git"
        );
        assert_eq!(strip_credentials("https://tok@host"), "https://host");
        assert_eq!(
            strip_credentials("https://github.com/o/r@v1"),
            "https://github.com/o/r@v1"
        );
        // The token before the host, an `@` in the path too.
        assert_eq!(
            strip_credentials("https://ghp_TOKEN@github.com/o/r@v1"),
            "https://github.com/o/r@v1"
        );
        assert_eq!(
            strip_credentials("https://x-access-token:abc@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("https://github.com/o/r"),
            "https://github.com/o/r"
        );
        assert_eq!(
            strip_credentials("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
    }

    /// A repository git refuses to read (another user's: "dubious
    /// ownership") is an error with git's message and fix, not "no
    /// repository, `git init && git commit` first".
    #[test]
    fn a_repository_git_refuses_is_an_error_with_gits_reason() {
        let repo = Repo::new();
        repo.commit("a", "a");
        // What git says of a repository of another owner, without chown.
        repo.git(&["config", "core.repositoryformatversion", "99"]);
        let e = revision(repo.path()).unwrap_err().to_string();
        assert!(e.contains("git cannot read the repository"), "{e}");
        assert!(
            e.contains("repositoryformatversion") || e.contains("99"),
            "{e}"
        );
    }

    #[test]
    fn a_repository_without_commits_has_no_revision() {
        let repo = Repo::new();
        assert_eq!(revision(repo.path()).unwrap(), None);
    }

    #[test]
    fn revision_of_a_clean_commit() {
        let repo = Repo::new();
        repo.commit("a", "a");
        let rev = revision(repo.path()).unwrap().unwrap();
        assert_eq!(rev.commit.len(), 40);
        assert_eq!(rev.short(), &rev.commit[..12]);
        assert_eq!(rev.commit_time, "2001-02-03T04:05:06Z");
        assert!(!rev.dirty);
        assert_eq!(rev.source, None);
        assert_eq!(
            uncommitted(repo.path()).unwrap(),
            [Vec::<u8>::new(), Vec::new()]
        );
    }

    #[test]
    fn a_changed_tracked_file_is_dirty_and_in_the_diff() {
        let repo = Repo::new();
        repo.commit("a", "a\n");
        repo.write("a", "b\n");
        assert!(revision(repo.path()).unwrap().unwrap().dirty);
        let [diff, untracked] = uncommitted(repo.path()).unwrap();
        let diff = String::from_utf8(diff).unwrap();
        assert!(diff.contains("-a\n+b\n"), "{diff}");
        assert!(untracked.is_empty());
    }

    /// Config that changes how `git diff` prints changes neither what a
    /// pin hashes for one tree nor makes two trees hash alike.
    #[test]
    fn the_pinned_diff_is_gits_default_whatever_the_config() {
        let repo = Repo::new();
        // A blank line among the context (diff.suppressBlankEmpty).
        let context: String = (0..20)
            .map(|i| match i {
                4 => "\n".to_string(),
                i => format!("line {i}\n"),
            })
            .collect();
        repo.commit("a", &context);
        repo.commit("b", "b\n");
        repo.write(
            "a",
            &context
                .replace("line 3\n", "three\n")
                .replace("line 15", "x"),
        );
        repo.write("b", "c\n");
        let plain = uncommitted(repo.path()).unwrap();
        // Git's default but with whole blob ids: an abbreviated id's length
        // follows core.abbrev and grows with the repository.
        assert_eq!(
            plain[0],
            repo.read(&["diff", "HEAD", "--binary", "--full-index"])
        );
        let git_dir = repo.path().join(".git");
        for (key, value) in [
            ("color.diff", "always"),
            ("diff.noprefix", "true"),
            ("diff.mnemonicPrefix", "true"),
            ("diff.context", "10"),
            ("diff.interHunkContext", "20"),
            ("diff.algorithm", "patience"),
            ("diff.renames", "false"),
            ("diff.indentHeuristic", "false"),
            ("diff.relative", "true"),
            ("core.quotePath", "false"),
            ("core.abbrev", "12"),
            ("diff.suppressBlankEmpty", "true"),
        ] {
            repo.git(&["config", key, value]);
        }
        std::fs::write(git_dir.join("order"), "b\na\n").unwrap();
        repo.git(&["config", "diff.orderFile", ".git/order"]);
        assert_eq!(uncommitted(repo.path()).unwrap(), plain);
        // An external diff that prints nothing, and a textconv that hides
        // every change: two trees must still differ.
        repo.git(&["config", "diff.external", "true"]);
        repo.git(&["config", "diff.hide.textconv", "echo same"]);
        std::fs::write(repo.path().join(".git/info/attributes"), "* diff=hide\n").unwrap();
        assert_eq!(uncommitted(repo.path()).unwrap(), plain);
        repo.write("b", "d\n");
        assert_ne!(uncommitted(repo.path()).unwrap(), plain);
    }

    /// A tracked file git is told not to look at is dirty and hashed by
    /// its contents, whatever `git status` says of it.
    #[test]
    fn a_file_git_is_told_not_to_look_at_is_dirty_and_hashed() {
        for flag in ["--assume-unchanged", "--skip-worktree"] {
            let repo = Repo::new();
            repo.commit("a", "a\n");
            repo.commit("b", "b\n");
            repo.git(&["update-index", flag, "a"]);
            let one = uncommitted(repo.path()).unwrap();
            // Marked but as committed: clean.
            assert!(!revision(repo.path()).unwrap().unwrap().dirty, "{flag}");
            assert_eq!(one, [Vec::<u8>::new(), Vec::new()], "{flag}");
            // Made executable: a change git would commit; group and other
            // execute bits alone are not (git reads the owner's).
            let a = repo.path().join("a");
            let mode = |m| {
                std::fs::set_permissions(&a, std::os::unix::fs::PermissionsExt::from_mode(m))
                    .unwrap()
            };
            mode(0o655);
            assert!(!revision(repo.path()).unwrap().unwrap().dirty, "{flag}");
            mode(0o755);
            assert!(revision(repo.path()).unwrap().unwrap().dirty, "{flag}");
            repo.git(&["config", "core.fileMode", "false"]);
            assert!(!revision(repo.path()).unwrap().unwrap().dirty, "{flag}");
            repo.git(&["config", "core.fileMode", "true"]);
            mode(0o644);
            repo.write("a", "changed\n");
            assert!(revision(repo.path()).unwrap().unwrap().dirty, "{flag}");
            // Its mode is in the pin's hash, not only its bytes.
            let plain = uncommitted(repo.path()).unwrap();
            mode(0o755);
            let executable = uncommitted(repo.path()).unwrap();
            assert_ne!(plain, executable, "{flag}");
            mode(0o644);
            assert!(repo.read(&["status", "--porcelain"]).is_empty(), "{flag}");
            let two = uncommitted(repo.path()).unwrap();
            assert_ne!(one, two, "{flag}");
            assert!(two[1].starts_with(b"a\0"), "{flag}");
            // Not there: left out of a sparse checkout (skip-worktree), or
            // deleted (assume-unchanged).
            std::fs::remove_file(repo.path().join("a")).unwrap();
            let sparse = flag == "--skip-worktree";
            assert_eq!(revision(repo.path()).unwrap().unwrap().dirty, !sparse);
            if !sparse {
                assert_ne!(uncommitted(repo.path()).unwrap(), two);
            }
        }
    }

    #[test]
    fn an_untracked_file_is_dirty_and_listed_unless_ignored() {
        let repo = Repo::new();
        repo.commit(".gitignore", "ignored\n");
        repo.write("ignored", "x");
        assert!(!revision(repo.path()).unwrap().unwrap().dirty);
        repo.write("new file; $(touch pwned)", "x");
        assert!(revision(repo.path()).unwrap().unwrap().dirty);
        let [diff, untracked] = uncommitted(repo.path()).unwrap();
        assert!(diff.is_empty());
        // sha256("x")
        let x = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
        assert_eq!(
            String::from_utf8(untracked).unwrap(),
            format!("new file; $(touch pwned)\0{x}\n")
        );
        assert!(!repo.path().join("pwned").exists());
    }

    #[test]
    fn editing_an_untracked_file_changes_what_a_pin_hashes() {
        let repo = Repo::new();
        repo.commit("a", "a");
        std::fs::create_dir(repo.path().join("src")).unwrap();
        repo.write("src/new.rs", "fn f() {}");
        let before = uncommitted(repo.path()).unwrap();
        repo.write("src/new.rs", "fn g() {}");
        let after = uncommitted(repo.path()).unwrap();
        assert_eq!(before[0], after[0], "the tracked diff is unchanged");
        assert_ne!(before[1], after[1]);
        // Paths are from the top of the work tree wherever git runs.
        let from_sub = uncommitted(&repo.path().join("src")).unwrap();
        assert_eq!(from_sub, after);
        std::os::unix::fs::symlink("new.rs", repo.path().join("src/link")).unwrap();
        let linked = String::from_utf8(uncommitted(repo.path()).unwrap()[1].clone()).unwrap();
        assert!(linked.starts_with("src/link\0"), "{linked}");
        assert_eq!(linked.lines().count(), 2, "{linked}");
    }

    #[test]
    fn the_origin_url_is_recorded_without_credentials() {
        let repo = Repo::new();
        repo.commit("a", "a");
        repo.git(&[
            "remote",
            "add",
            "origin",
            "https://u:secret@example.com/o/r.git",
        ]);
        let rev = revision(repo.path()).unwrap().unwrap();
        assert_eq!(rev.source.as_deref(), Some("https://example.com/o/r.git"));
    }

    #[test]
    fn archive_and_worktree_hold_the_committed_tree_only() {
        let repo = Repo::new();
        repo.commit("a", "a");
        let commit = revision(repo.path()).unwrap().unwrap().commit;
        repo.write("a", "changed");
        let tar = archive_head(repo.path()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .filter(|e| e.header().entry_type().is_file())
            .map(|e| e.path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a"]);
        let wt = repo.path().join("wt");
        add_worktree(repo.path(), &wt, &commit).unwrap();
        assert_eq!(std::fs::read_to_string(wt.join("a")).unwrap(), "a");
        let err = add_worktree(repo.path(), &repo.path().join("wt2"), &"0".repeat(40)).unwrap_err();
        assert!(format!("{err:#}").contains("`git fetch` it"), "{err:#}");
    }

    #[test]
    fn diff_stat_between_two_commits() {
        let repo = Repo::new();
        repo.commit("a", "a\n");
        let first = revision(repo.path()).unwrap().unwrap().commit;
        repo.commit("b", "b\nc\n");
        let second = revision(repo.path()).unwrap().unwrap().commit;
        assert!(has_commit(repo.path(), &first).unwrap());
        assert!(!has_commit(repo.path(), &"0".repeat(40)).unwrap());
        let stat = diff_stat(repo.path(), &first, &second).unwrap();
        assert!(stat.contains("b | 2 ++"), "{stat}");
        assert!(stat.contains("1 file changed"), "{stat}");
    }

    #[test]
    fn outside_a_repository_errors_name_the_directory_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(revision(dir.path()).unwrap(), None);
        let err = uncommitted(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is not in a git repository"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("git clone"), "{err}");
    }
}

/// A git repository for tests (this module's and others').
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use xshell::{cmd, Shell};

    /// A repository in a temporary directory, with git's identity and
    /// config isolated from the user's.
    pub struct Repo {
        dir: tempfile::TempDir,
        sh: Shell,
    }

    impl Repo {
        pub fn new() -> Repo {
            let dir = tempfile::tempdir().unwrap();
            let sh = Shell::new().unwrap();
            for (k, v) in [
                ("GIT_CONFIG_GLOBAL", "/dev/null"),
                ("GIT_CONFIG_NOSYSTEM", "1"),
                ("GIT_AUTHOR_NAME", "t"),
                ("GIT_AUTHOR_EMAIL", "t@example.com"),
                ("GIT_COMMITTER_NAME", "t"),
                ("GIT_COMMITTER_EMAIL", "t@example.com"),
                ("GIT_COMMITTER_DATE", "2001-02-03T04:05:06Z"),
            ] {
                sh.set_var(k, v);
            }
            let repo = Repo { dir, sh };
            repo.git(&["init", "-q"]);
            repo
        }

        pub fn path(&self) -> &Path {
            self.dir.path()
        }

        pub fn git(&self, args: &[&str]) {
            let dir = self.path();
            cmd!(self.sh, "git -C {dir} {args...}")
                .quiet()
                .run()
                .unwrap();
        }

        /// `git args` in the repository: its stdout.
        pub fn read(&self, args: &[&str]) -> Vec<u8> {
            let dir = self.path();
            cmd!(self.sh, "git -C {dir} {args...}")
                .quiet()
                .output()
                .unwrap()
                .stdout
        }

        pub fn write(&self, name: &str, text: &str) {
            let path = self.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        pub fn commit(&self, name: &str, text: &str) {
            self.write(name, text);
            self.git(&["add", name]);
            self.git(&["commit", "-q", "-m", name]);
        }
    }
}
