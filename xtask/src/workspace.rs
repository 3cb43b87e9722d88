//! The workspace root, found at run time.
//!
//! Every path the xtask reads or writes (machine and experiment files, `target/`, the kernel
//! build) is relative to the root of the checkout it is run in. The root is found from the
//! current directory upwards, as cargo finds a workspace: the first `Cargo.toml` with a
//! `[workspace]` table, which must be this project's (its members include `boot`, `kernel`,
//! `hmm` and `xtask`). It is not fixed at compile time: a copied or moved checkout whose
//! `target/` came along runs a stale xtask binary that cargo does not rebuild, and that binary
//! must still work on the copy, not on the original.
//!
//! [`init`] finds it once, in `main`; [`root`] returns it after that.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The members a workspace must have to be this project.
const MEMBERS: [&str; 4] = ["boot", "kernel", "hmm", "xtask"];

/// Why the root could not be found.
#[derive(Debug, Clone, PartialEq)]
pub enum RootError {
    /// No `Cargo.toml` with a `[workspace]` from `start` upwards.
    NotFound {
        /// Where the search began.
        start: PathBuf,
    },
    /// The nearest workspace is another project's.
    NotThisProject {
        /// Its root.
        dir: PathBuf,
        /// The member it lacks.
        missing: &'static str,
    },
    /// A `Cargo.toml` on the way could not be read or parsed.
    BadManifest {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
}

impl fmt::Display for RootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { start } => write!(
                f,
                "not inside the hmm-unikernel checkout: no Cargo.toml with a [workspace] in {} or above; run `cargo xtask` from the checkout",
                start.display()
            ),
            Self::NotThisProject { dir, missing } => write!(
                f,
                "the workspace at {} is not the hmm-unikernel checkout (its members lack `{missing}`); run `cargo xtask` from the checkout",
                dir.display()
            ),
            Self::BadManifest { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

/// The root of this project's workspace that contains `start` (a directory).
pub fn find_root(start: &Path) -> Result<PathBuf, RootError> {
    for dir in start.ancestors() {
        let path = dir.join("Cargo.toml");
        if !path.is_file() {
            continue;
        }
        let bad = |error: String| RootError::BadManifest { path: path.clone(), error };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let manifest: toml::Table = toml::from_str(&text).map_err(|e| bad(e.message().trim_end().to_string()))?;
        // A member's own manifest: its workspace is further up.
        let Some(ws) = manifest.get("workspace") else { continue };
        let members: Vec<&str> =
            ws.get("members").and_then(|m| m.as_array()).into_iter().flatten().filter_map(|m| m.as_str()).collect();
        return match MEMBERS.into_iter().find(|m| !members.contains(m)) {
            None => Ok(dir.to_path_buf()),
            Some(missing) => Err(RootError::NotThisProject { dir: dir.to_path_buf(), missing }),
        };
    }
    Err(RootError::NotFound { start: start.to_path_buf() })
}

static ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Finds the root from the current directory; called once, before any command runs.
pub fn init() -> Result<&'static Path, RootError> {
    let cwd = std::env::current_dir().map_err(|e| RootError::BadManifest {
        path: PathBuf::from("."),
        error: format!("the current directory: {e}"),
    })?;
    let found = find_root(&cwd)?;
    Ok(ROOT.get_or_init(|| found))
}

/// The workspace root [`init`] found.
///
/// # Panics
/// Before [`init`] succeeded (a bug in `main`).
pub fn root() -> &'static Path {
    ROOT.get().expect("workspace::init runs before any command")
}

/// The root once [`init`] found it, else `None` (in unit tests, which do not call it).
pub fn found() -> Option<&'static Path> {
    ROOT.get().map(PathBuf::as_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory tree under the temp dir (made by tempfile), removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            Self(tempfile::Builder::new().prefix(&format!("xtask-ws-{name}-")).tempdir().unwrap().keep())
        }
        fn file(&self, rel: &str, text: &str) -> &Self {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const OURS: &str = "[workspace]\nmembers = [\"boot\", \"kernel\", \"hmm\", \"drivers\", \"xtask\"]\n";
    const MEMBER: &str = "[package]\nname = \"hmm\"\n";

    #[test]
    fn a_copied_checkout_is_its_own_root() {
        // A copy of the checkout somewhere else, run from a member's source folder: the root
        // is the copy (it was the directory the binary was compiled in).
        let t = Tree::new("copy");
        t.file("Cargo.toml", OURS).file("hmm/Cargo.toml", MEMBER).file("hmm/src/lib.rs", "");
        assert_eq!(find_root(&t.0.join("hmm/src")), Ok(t.0.clone()));
        assert_eq!(find_root(&t.0), Ok(t.0.clone()));
    }

    #[test]
    fn this_checkout_is_found_from_inside_it() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(find_root(&here.join("src")), Ok(here.parent().unwrap().to_path_buf()));
    }

    #[test]
    fn outside_any_workspace_is_a_clear_error() {
        let t = Tree::new("outside");
        t.file("notes/readme.txt", "").file("notes/Cargo.toml", MEMBER);
        // The temp dir itself has no workspace above it on any machine we run on.
        let e = find_root(&t.0.join("notes")).unwrap_err();
        assert_eq!(e, RootError::NotFound { start: t.0.join("notes") });
        assert!(e.to_string().contains("run `cargo xtask` from the checkout"), "{e}");
    }

    #[test]
    fn another_projects_workspace_is_refused() {
        let t = Tree::new("other");
        t.file("Cargo.toml", "[workspace]\nmembers = [\"app\", \"xtask\"]\n").file("app/Cargo.toml", MEMBER);
        let e = find_root(&t.0.join("app")).unwrap_err();
        assert_eq!(e, RootError::NotThisProject { dir: t.0.clone(), missing: "boot" });
        assert!(e.to_string().contains("is not the hmm-unikernel checkout"), "{e}");
        let t = Tree::new("broken");
        t.file("Cargo.toml", "[workspace\n");
        assert!(matches!(find_root(&t.0), Err(RootError::BadManifest { .. })));
    }
}
