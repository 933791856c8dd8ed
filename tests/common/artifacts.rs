//! The fake driver's compiled parts: libcuda, NVML, nvidia-smi and the
//! other tools and libraries gcc builds from tests/fixtures/, cached by
//! content (see `cached_build`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// Compiles (once per process and content hash) the driver's libraries and
/// binaries; returns a dir with `lib/` and `bin/`.
pub(crate) fn driver_artifacts(version: &str, gpus: &[FakeGpu], mig: &[FakeMig]) -> PathBuf {
    let header = gpu_header(version, gpus, mig);
    let key = content_key(&[
        "driver",
        version,
        &header,
        SRC_CUDA,
        SRC_NVML,
        SRC_SMI,
        SRC_TOOL,
        SRC_LIB,
        // What is built besides the sources' own outputs.
        &format!("{GRAPHICS_LIBS:?} {GRAPHICS_OWN_VERSION_LIBS:?} {XORG_MODULES:?}"),
    ]);
    let version = version.to_string();
    cached_build(&format!("driver-{key}"), move |out| {
        let lib = out.join("lib");
        let lib_graphics = out.join("lib-graphics");
        let xorg = out.join("xorg");
        let bin = out.join("bin");
        let src = out.join("src");
        for d in [&lib, &lib_graphics, &xorg, &bin, &src] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(src.join("fake_gpus.h"), &header).unwrap();
        let write_src = |name: &str, text: &str| {
            let p = src.join(name);
            fs::write(&p, text).unwrap();
            p
        };
        let cuda = write_src("fake_cuda.c", SRC_CUDA);
        let nvml = write_src("fake_nvml.c", SRC_NVML);
        let smi = write_src("fake_smi.c", SRC_SMI);
        let tool = write_src("fake_tool.c", SRC_TOOL);
        let plain = write_src("fake_lib.c", SRC_LIB);

        for (name, major) in DRIVER_LIBS {
            let file = format!("{name}.so.{version}");
            let soname = match major {
                Some(major) => format!("{name}.so.{major}"),
                None => file.clone(),
            };
            let source = match *name {
                "libcuda" => &cuda,
                "libnvidia-ml" => &nvml,
                _ => &plain,
            };
            gcc_shared(
                source,
                &soname,
                &lib.join(&file),
                &[&format!("-DLIB_NAME=\"{name}\"")],
            );
        }
        gcc_shared(
            &cuda,
            "libcuda.so.1",
            &lib.join(format!("libcuda.so.{STALE_DRIVER_VERSION}")),
            &["-DFAKE_CUDA_DRIVER_VERSION=12020"],
        );
        for (file, soname) in GRAPHICS_OWN_VERSION_LIBS {
            gcc_shared(
                &plain,
                soname,
                &lib_graphics.join(file),
                &[&format!("-DLIB_NAME=\"{soname}\"")],
            );
        }
        for (_, name) in XORG_MODULES {
            let name = name.replace("{version}", &version);
            gcc_shared(
                &plain,
                &name,
                &xorg.join(&name),
                &[&format!("-DLIB_NAME=\"{name}\"")],
            );
        }
        for (name, major) in GRAPHICS_LIBS {
            let file = format!("{name}.so.{version}");
            let soname = match major {
                Some(major) => format!("{name}.so.{major}"),
                None => file.clone(),
            };
            gcc_shared(
                &plain,
                &soname,
                &lib_graphics.join(&file),
                &[&format!("-DLIB_NAME=\"{name}\"")],
            );
        }

        // nvidia-smi links against the SONAME, without an rpath.
        let link_dir = out.join("link");
        fs::create_dir_all(&link_dir).unwrap();
        symlink(
            lib.join(format!("libnvidia-ml.so.{version}")),
            link_dir.join("libnvidia-ml.so.1"),
        )
        .unwrap();
        run_ok(
            Command::new("gcc")
                .args(["-O2", "-Wall", "-o"])
                .arg(bin.join("nvidia-smi"))
                .arg(&smi)
                .arg("-L")
                .arg(&link_dir)
                .arg("-l:libnvidia-ml.so.1"),
        );
        for tool_name in ["nvidia-debugdump", "nvidia-cuda-mps-control"] {
            run_ok(
                Command::new("gcc")
                    .args([
                        "-O2",
                        "-Wall",
                        &format!("-DTOOL_NAME=\"{tool_name}\""),
                        "-o",
                    ])
                    .arg(bin.join(tool_name))
                    .arg(&tool),
            );
        }
        fs::remove_dir_all(&link_dir).unwrap();
    })
}

/// Compiles (once, cached) the i386 libraries; returns the dir holding them.
pub(crate) fn compat32_artifacts(version: &str) -> PathBuf {
    let key = content_key(&["compat32", version, SRC_CUDA, SRC_LIB]);
    let version = version.to_string();
    cached_build(&format!("compat32-{key}"), move |out| {
        let src = out.join("src");
        let lib = out.join("lib");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&lib).unwrap();
        fs::write(src.join("fake_cuda.c"), SRC_CUDA).unwrap();
        fs::write(src.join("fake_lib.c"), SRC_LIB).unwrap();
        build_compat32_libs(
            &src,
            &lib,
            &version,
            &src.join("fake_cuda.c"),
            &src.join("fake_lib.c"),
        );
    })
    .join("lib")
}

/// The i386 copies (`COMPAT32_LIBS`) into `out`: libcuda from fake_cuda.c,
/// the others from fake_lib.c (no libc headers needed, so no
/// libc6-dev-i386). They are linked with `-nostdlib` against a stub i386
/// `libc.so.6` (built in `work`) so that they have `DT_NEEDED libc.so.6`, like
/// the real ones: `ldconfig` then lists them as `(libc6)`, flags 0x0003
/// (without that NEEDED they would be plain `(ELF)`, 0x0001).
pub(crate) fn build_compat32_libs(
    work: &Path,
    out: &Path,
    version: &str,
    cuda: &Path,
    plain: &Path,
) {
    fs::create_dir_all(work).unwrap();
    let stub = work.join("libc_stub.c");
    fs::write(&stub, "int fake_i386_libc_stub;\n").unwrap();
    let gcc32 = |source: &Path, soname: &str, output: &Path, extra: &[&str]| {
        let mut cmd = Command::new("gcc");
        cmd.args(["-m32", "-O2", "-Wall", "-shared", "-nostdlib", "-fPIC"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(output)
            .arg(source)
            .args(extra);
        let result = cmd
            .output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        assert!(
            result.status.success(),
            "{cmd:?} failed: gcc cannot build i386 libraries here (apt-get install -y gcc-multilib)\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
    };
    gcc32(&stub, "libc.so.6", &work.join("libc.so.6"), &[]);
    let link = format!("-L{}", work.display());
    for (name, major) in COMPAT32_LIBS {
        let file = format!("{name}.so.{version}");
        let soname = match major {
            Some(major) => format!("{name}.so.{major}"),
            None => file.clone(),
        };
        let source = if *name == "libcuda" { cuda } else { plain };
        let define = format!("-DLIB_NAME=\"{name}\"");
        gcc32(
            source,
            &soname,
            &out.join(&file),
            &[&define, &link, "-Wl,--no-as-needed", "-l:libc.so.6"],
        );
    }
}

pub(crate) fn gpu_header(version: &str, gpus: &[FakeGpu], mig: &[FakeMig]) -> String {
    let mut h = String::new();
    writeln!(h, "/* Generated by tests/common/mod.rs */").unwrap();
    writeln!(h, "#define FAKE_DRIVER_VERSION \"{}\"", c_escape(version)).unwrap();
    writeln!(h, "#define FAKE_GPU_COUNT {}u", gpus.len()).unwrap();
    writeln!(h, "static const struct fake_gpu FAKE_GPUS[] = {{").unwrap();
    for gpu in gpus {
        let (domain, bus, device, _) = parse_bus_id(&gpu.bus_id);
        writeln!(
            h,
            "    {{ {}, \"{}\", \"{}\", \"{}\", {domain}u, {bus}u, {device}u }},",
            gpu.minor,
            c_escape(&gpu.uuid),
            c_escape(&gpu.model),
            gpu.nvml_bus_id()
        )
        .unwrap();
    }
    // Sentinel, so that the array is never empty.
    writeln!(h, "    {{ -1, \"\", \"\", \"\", 0u, 0u, 0u }},").unwrap();
    writeln!(h, "}};").unwrap();
    // MIG devices: { parent index, gi, ci, MIG index on the parent, uuid },
    // sorted by parent, then MIG index.
    writeln!(h, "#define FAKE_MIG_PROFILE \"{MIG_PROFILE}\"").unwrap();
    writeln!(h, "#define FAKE_MIG_COUNT {}u", mig.len()).unwrap();
    writeln!(h, "static const struct fake_mig FAKE_MIGS[] = {{").unwrap();
    let mut mig_index = 0;
    for (i, m) in mig.iter().enumerate() {
        if i > 0 && mig[i - 1].gpu_index != m.gpu_index {
            mig_index = 0;
        }
        writeln!(
            h,
            "    {{ {}, {}u, {}u, {mig_index}u, \"{}\" }},",
            m.gpu_index,
            m.gi,
            m.ci,
            c_escape(&m.uuid)
        )
        .unwrap();
        mig_index += 1;
    }
    writeln!(h, "    {{ -1, 0u, 0u, 0u, \"\" }},").unwrap();
    writeln!(h, "}};").unwrap();
    h
}

pub(crate) fn c_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub(crate) fn toml_str(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

pub(crate) fn gcc_shared(source: &Path, soname: &str, out: &Path, defines: &[&str]) {
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-shared", "-fPIC"])
            .arg(format!("-Wl,-soname,{soname}"))
            .args(defines)
            .arg("-o")
            .arg(out)
            .arg(source),
    );
}

/// A fake libcuda (SONAME libcuda.so.1) at `out` whose cuDriverGetVersion
/// reports `cuda_version` (`12060` = 12.6): a driver upgrade's new file.
pub fn build_fake_libcuda(out: &Path, cuda_version: i32) {
    let src = out.with_extension("c");
    fs::write(&src, SRC_CUDA).unwrap();
    gcc_shared(
        &src,
        "libcuda.so.1",
        out,
        &[&format!("-DFAKE_CUDA_DRIVER_VERSION={cuda_version}")],
    );
    fs::remove_file(&src).unwrap();
}
