//! Container root filesystems built without a registry: busybox, and
//! glibc images with and without ldconfig.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootfsKind {
    /// Static busybox only, no libc, not Debian-family.
    Busybox,
    /// Debian 12 like (merged /usr): busybox + host glibc, `/etc/debian_version`,
    /// its own `libimage.so.1` and `/usr/bin/use-image-lib`; with `ldconfig`,
    /// `/sbin/ldconfig` and an `/etc/ld.so.cache`.
    Glibc { ldconfig: bool },
}

pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "ls", "echo", "test", "readlink", "stat", "sleep", "true", "wc", "grep", "env",
    "head", "mkdir",
];

/// Builds (copies from a per-process template) a root filesystem at
/// `dir/rootfs` and returns its path.
pub fn build_rootfs(dir: &Path, kind: RootfsKind) -> PathBuf {
    let template = rootfs_template(kind);
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&rootfs).expect("create rootfs dir");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(template.join("."))
            .arg(&rootfs),
    );
    rootfs
}

fn rootfs_template(kind: RootfsKind) -> PathBuf {
    let busybox = host_busybox();
    let key = content_key(&[
        "rootfs",
        &format!("{kind:?}"),
        SRC_IMAGE_LIB,
        SRC_USE_IMAGE_LIB,
        SRC_CUDA_VERSION,
        &file_identity(&busybox),
        &file_identity(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
        &file_identity(&ldconfig_path()),
    ]);
    let name = match kind {
        RootfsKind::Busybox => format!("rootfs-busybox-{key}"),
        RootfsKind::Glibc { ldconfig: true } => format!("rootfs-glibc-ldconfig-{key}"),
        RootfsKind::Glibc { ldconfig: false } => format!("rootfs-glibc-{key}"),
    };
    cached_build(&name, |out| {
        let root = out.join("rootfs");
        match kind {
            RootfsKind::Busybox => build_busybox_rootfs(&root, &busybox),
            RootfsKind::Glibc { ldconfig } => build_glibc_rootfs(&root, &busybox, ldconfig, out),
        }
    })
    .join("rootfs")
}

pub(crate) fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}", path.display(), m.size(), m.mtime()),
        Err(_) => format!("{}:missing", path.display()),
    }
}

pub(crate) fn host_busybox() -> PathBuf {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(candidate);
        if p.exists() && is_static_elf(p) {
            return p.to_path_buf();
        }
    }
    panic!("a static /bin/busybox is needed: apt-get install -y busybox-static");
}

/// An ELF without a PT_INTERP program header (static or static-pie).
pub(crate) fn is_static_elf(path: &Path) -> bool {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(_) => return false,
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) != 3
    })
}

pub(crate) fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        fs::create_dir_all(root.join(d)).expect("create rootfs dir");
    }
}

pub(crate) fn install_busybox(bin_dir: &Path, busybox: &Path) {
    fs::copy(busybox, bin_dir.join("busybox")).expect("copy busybox");
    for applet in BUSYBOX_APPLETS {
        symlink("busybox", bin_dir.join(applet)).expect("create busybox applet link");
    }
}

fn build_busybox_rootfs(root: &Path, busybox: &Path) {
    mkdirs(
        root,
        &[
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "etc",
            "usr/bin",
            "usr/lib64",
        ],
    );
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    install_busybox(&root.join("bin"), busybox);
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

fn build_glibc_rootfs(root: &Path, busybox: &Path, ldconfig: bool, work: &Path) {
    mkdirs(
        root,
        &[
            "usr/bin",
            "usr/sbin",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib64",
            "usr/local/bin",
            "usr/local/lib",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "var",
            "root",
            "etc/ld.so.conf.d",
        ],
    );
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    // Merged /usr, like Debian 12 images.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link)).unwrap();
    }
    symlink("../run", root.join("var/run")).unwrap();
    install_busybox(&root.join("usr/bin"), busybox);

    let multiarch = root.join(LIB_DIR);
    let ld_so = "ld-linux-x86-64.so.2";
    let host_libs = [
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        ld_so,
    ];
    for lib in host_libs {
        let host = Path::new("/lib/x86_64-linux-gnu").join(lib);
        if !host.exists() {
            assert!(
                lib != "libc.so.6" && lib != ld_so,
                "host has no {}",
                host.display()
            );
            continue;
        }
        let real = fs::canonicalize(&host).expect("resolve host lib");
        fs::copy(&real, multiarch.join(lib)).expect("copy host lib");
    }
    // Debian: /lib64/ld-linux-x86-64.so.2 -> ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    symlink(
        format!("../lib/x86_64-linux-gnu/{ld_so}"),
        root.join("usr/lib64").join(ld_so),
    )
    .unwrap();

    fs::write(root.join("etc/debian_version"), "12.0\n").unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(
        root.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/ld.so.conf.d/libc.conf"),
        "# libc default configuration\n/usr/local/lib\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/ld.so.conf.d/x86_64-linux-gnu.conf"),
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
    )
    .unwrap();

    // The image's own library and a program using it.
    let src = work.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("image_lib.c"), SRC_IMAGE_LIB).unwrap();
    fs::write(src.join("use_image_lib.c"), SRC_USE_IMAGE_LIB).unwrap();
    gcc_shared(
        &src.join("image_lib.c"),
        "libimage.so.1",
        &multiarch.join("libimage.so.1.0.0"),
        &[],
    );
    symlink("libimage.so.1.0.0", multiarch.join("libimage.so.1")).unwrap();
    let link_dir = work.join("link");
    fs::create_dir_all(&link_dir).unwrap();
    symlink(
        multiarch.join("libimage.so.1.0.0"),
        link_dir.join("libimage.so.1"),
    )
    .unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(root.join("usr/bin/use-image-lib"))
            .arg(src.join("use_image_lib.c"))
            .arg("-L")
            .arg(&link_dir)
            .arg("-l:libimage.so.1"),
    );

    // What a CUDA program's dlopen("libcuda.so.1") finds.
    fs::write(src.join("cuda_version.c"), SRC_CUDA_VERSION).unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(root.join("usr/bin/cuda-version"))
            .arg(src.join("cuda_version.c"))
            .arg("-ldl"),
    );

    if ldconfig {
        let host_ldconfig = ldconfig_path();
        assert!(
            is_static_elf(&host_ldconfig),
            "{} is not static; it cannot run inside the image",
            host_ldconfig.display()
        );
        fs::copy(&host_ldconfig, root.join("usr/sbin/ldconfig")).expect("copy ldconfig");
        run_ok(Command::new(&host_ldconfig).arg("-r").arg(root));
    }
}

pub(crate) fn ldconfig_path() -> PathBuf {
    ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("ldconfig not found (libc-bin)")
}

/// `ldconfig -p` of a cache file, as the container's loader would read it.
pub fn ldconfig_print(cache: &Path) -> String {
    let out = Command::new("ldconfig")
        .arg("-p")
        .arg("-C")
        .arg(cache)
        .output()
        .expect("run ldconfig -p");
    assert!(
        out.status.success(),
        "ldconfig -p -C {}: {out:?}",
        cache.display()
    );
    String::from_utf8(out.stdout).unwrap()
}
