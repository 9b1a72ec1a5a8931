use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;

/// A fresh directory of the test's own, removed at the end.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("mirror-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_new_file_is_private() {
    let d = Dir::new("new");
    let p = d.0.join("out");
    create(&p, false).unwrap().write_all(b"x").unwrap();
    assert_eq!(mode(&p), 0o600);
}

#[test]
fn a_symlink_is_never_followed_and_its_target_is_untouched() {
    let d = Dir::new("symlink");
    let target = d.0.join("target");
    std::fs::write(&target, b"precious").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = d.0.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for overwrite in [false, true] {
        let e = create(&link, overwrite).unwrap_err();
        assert!(matches!(e, OutputFileError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(mode(&target), 0o644);
}

#[test]
fn an_existing_file_is_refused_unless_overwrite_and_keeps_its_mode() {
    let d = Dir::new("exists");
    let p = d.0.join("out");
    std::fs::write(&p, b"old contents").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = create(&p, false).unwrap_err();
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
    create(&p, true).unwrap().write_all(b"new").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    assert_eq!(
        mode(&p),
        0o640,
        "the agent never chmods a file it did not create"
    );
}

#[test]
fn a_fifo_is_written_as_is() {
    let d = Dir::new("fifo");
    let p = d.0.join("pipe");
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A reader, so opening the FIFO for writing does not block.
    let reader = std::thread::spawn({
        let p = p.clone();
        move || std::fs::read(p).unwrap()
    });
    let mut f = create(&p, false).unwrap();
    f.write_all(b"through the pipe").unwrap();
    drop(f);
    assert_eq!(reader.join().unwrap(), b"through the pipe");
    assert_eq!(mode(&p), 0o644, "a FIFO keeps its mode");
}

#[test]
fn a_character_device_keeps_its_mode() {
    let before = mode(Path::new("/dev/null"));
    create(Path::new("/dev/null"), false)
        .unwrap()
        .write_all(b"discarded")
        .unwrap();
    assert_eq!(mode(Path::new("/dev/null")), before);
}

#[test]
fn a_directory_is_one_line_naming_it() {
    let d = Dir::new("dir");
    let e = create(&d.0, true).unwrap_err();
    assert!(matches!(e, OutputFileError::Directory { .. }), "{e}");
    assert!(e.to_string().contains(d.0.to_str().unwrap()), "{e}");
}
