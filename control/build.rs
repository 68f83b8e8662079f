//! Stamps the commit the binary was built from into `rafael --version`: `RAFAEL_COMMIT` when
//! set (a container build has no `.git`), else `git rev-parse`, else `unknown`.

use std::{path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=RAFAEL_COMMIT");
    // Re-run when HEAD moves: a checkout rewrites HEAD, a commit the branch's ref (a loose file,
    // or packed-refs). Not on every `git add`: that would rebuild the crate for nothing.
    let git = Path::new("../.git");
    if git.join("HEAD").exists() {
        println!("cargo:rerun-if-changed=../.git/HEAD");
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        // A path that does not exist would make cargo re-run the script on every build.
        for path in [reference, "packed-refs"] {
            if git.join(path).exists() {
                println!("cargo:rerun-if-changed=../.git/{path}");
            }
        }
    }
    let commit = std::env::var("RAFAEL_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c != "unknown")
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RAFAEL_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
