//! Stamps the commit the binary was built from into `rafael --version`: `RAFAEL_COMMIT` when
//! set (a container build has no `.git`), else `git rev-parse`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RAFAEL_COMMIT");
    // Re-run when HEAD moves: a checkout rewrites HEAD, a commit the branch's ref (a loose file,
    // or packed-refs). Git says where those are, which in a worktree is not `../.git/`. Not on
    // every `git add`: that would rebuild the crate for nothing.
    let head = git(&["rev-parse", "--git-path", "HEAD"]);
    let branch = git(&["symbolic-ref", "-q", "HEAD"])
        .and_then(|reference| git(&["rev-parse", "--git-path", &reference]));
    let packed = git(&["rev-parse", "--git-path", "packed-refs"]);
    for path in [head, branch, packed].into_iter().flatten() {
        // A path that does not exist would make cargo re-run the script on every build.
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("RAFAEL_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c != "unknown")
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RAFAEL_COMMIT={commit}");
}

/// What `git args` prints, trimmed, when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}
