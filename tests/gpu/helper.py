#!/usr/bin/env python3
"""JSON helpers of tests/gpu/acceptance.sh (the GPU machine has Python, not jq).

  helper.py spec TEMPLATE OUT ROOTFS ARGS_JSON [ENV...]
      config.json from `runc spec`'s output: terminal off, process.args,
      PATH + ENV entries, absolute writable root, hostname.
  helper.py baseline PATCHED OUT ROOTFS
      the config.json our runtime wrote, as plain runc must get it to start
      the same container by hand: our hook entries and NVIDIA_* env removed,
      root pointed at ROOTFS. Mounts, device nodes and cgroup rules stay.
  helper.py summary PATCHED
      what the runtime injected: device nodes, mounts, hooks, env.
  helper.py probe-ok PATCHED
      exit 0 when the patch holds libcuda.so.1, libnvidia-ml.so.1, nvidia-smi
      and /dev/nvidiactl; prints what is missing otherwise.
  helper.py mount-source PATCHED PREFIX
      host path of the first mount whose destination's file name starts
      with PREFIX (libcuda.so. finds the one mount of libcuda's file).
"""
import json
import os
import sys

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def load(path):
    with open(path) as f:
        return json.load(f)


def save(value, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def is_ours(hook):
    name = os.path.basename(hook.get("path", ""))
    args = hook.get("args", [])
    return name.startswith("nvidia-container") or "--injected-by-runtime" in args


def main(argv):
    cmd = argv[1]
    if cmd == "spec":
        template, out, rootfs, args = argv[2:6]
        spec = load(template)
        spec["process"]["terminal"] = False
        spec["process"]["args"] = json.loads(args)
        spec["process"]["env"] = [PATH] + argv[6:]
        spec["root"] = {"path": rootfs, "readonly": False}
        spec["hostname"] = "gpu-acceptance"
        save(spec, out)
    elif cmd == "baseline":
        patched, out, rootfs = argv[2:5]
        spec = load(patched)
        hooks = spec.get("hooks", {})
        for stage in list(hooks):
            hooks[stage] = [h for h in hooks[stage] if not is_ours(h)]
            if not hooks[stage]:
                del hooks[stage]
        if not hooks:
            spec.pop("hooks", None)
        spec["process"]["env"] = [
            e for e in spec["process"].get("env", []) if not e.startswith("NVIDIA_")
        ]
        spec["root"] = {"path": rootfs, "readonly": False}
        save(spec, out)
    elif cmd == "summary":
        spec = load(argv[2])
        for d in spec.get("linux", {}).get("devices", []):
            print("  device  %-28s %s %s:%s mode=%o" % (
                d.get("path"), d.get("type"), d.get("major"), d.get("minor"),
                d.get("fileMode", 0)))
        for r in spec.get("linux", {}).get("resources", {}).get("devices", []):
            if r.get("allow") and r.get("major") is not None:
                print("  allow   %s %s:%s %s" % (r.get("type"), r.get("major"),
                                               r.get("minor"), r.get("access")))
        for m in spec.get("mounts", []):
            src = m.get("source", "")
            if src.startswith("/") and m.get("type") in (None, "bind", "none"):
                print("  mount   %-52s <- %s [%s]" % (m.get("destination"), src,
                                                      ",".join(m.get("options", []))))
        for stage, hooks in spec.get("hooks", {}).items():
            for h in hooks:
                args = h.get("args", [])
                shown = " ".join(args[:6]) + (" ... (%d args)" % len(args) if len(args) > 6 else "")
                print("  hook    %s: %s: %s" % (stage, h.get("path"), shown))
        for e in spec.get("process", {}).get("env", []):
            if e.startswith(("NVIDIA_", "CUDA_", "LD_")):
                print("  env     %s" % e)
    elif cmd == "probe-ok":
        spec = load(argv[2])
        dests = [m.get("destination", "") for m in spec.get("mounts", [])]
        devs = [d.get("path", "") for d in spec.get("linux", {}).get("devices", [])]
        missing = []
        for want in ("libcuda.so.1", "libnvidia-ml.so.1", "nvidia-smi"):
            if not any(d.endswith("/" + want) for d in dests):
                missing.append("mount of " + want)
        if "/dev/nvidiactl" not in devs:
            missing.append("device /dev/nvidiactl")
        if not any(d[len("/dev/nvidia"):].isdigit() for d in devs if d.startswith("/dev/nvidia")):
            missing.append("a /dev/nvidiaN device")
        if missing:
            print("missing: " + ", ".join(missing))
            return 1
        print("ok: %d mounts, %d device nodes, %d hook stages" % (
            len(dests), len(devs), len(spec.get("hooks", {}))))
    elif cmd == "mount-source":
        spec = load(argv[2])
        for m in spec.get("mounts", []):
            if os.path.basename(m.get("destination", "")).startswith(argv[3]):
                print(m.get("source", ""))
                return 0
        return 1
    else:
        print("unknown command " + cmd, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
