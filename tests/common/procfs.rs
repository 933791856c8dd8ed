//! The text of the fake driver's procfs files (`information`, `params`,
//! `/proc/devices`).
#![allow(dead_code)]

use super::*;

pub(crate) fn proc_information(gpu: &FakeGpu, index: usize) -> String {
    // Same padding as the real file: key, colon, spaces/tabs, one space.
    format!(
        "Model: \t\t {}\n\
         IRQ:   \t\t {}\n\
         GPU UUID: \t {}\n\
         Video BIOS: \t 96.00.99.00.01\n\
         Bus Type: \t PCIe\n\
         DMA Size: \t 47 bits\n\
         DMA Mask: \t 0x7fffffffffff\n\
         Bus Location: \t {}\n\
         Device Minor: \t {}\n\
         GPU Excluded:\t No\n",
        gpu.model,
        408 + index,
        gpu.uuid,
        gpu.bus_id,
        gpu.minor
    )
}

pub(crate) const PROC_PARAMS: &str = "\
ResmanDebugLevel: 4294967295
RmLogonRC: 1
ModifyDeviceFiles: 1
DeviceFileUID: 0
DeviceFileGID: 0
DeviceFileMode: 438
InitializeSystemMemoryAllocations: 1
UsePageAttributeTable: 4294967295
EnableMSI: 1
EnablePCIeGen3: 0
MemoryPoolSize: 0
KMallocHeapMaxSize: 0
VMallocHeapMaxSize: 0
IgnoreMMIOCheck: 0
TCEBypassMode: 0
EnableStreamMemOPs: 0
EnableUserNUMAManagement: 1
NvLinkDisable: 0
RmProfilingAdminOnly: 1
PreserveVideoMemoryAllocations: 0
DynamicPowerManagement: 3
DynamicPowerManagementVideoMemoryThreshold: 200
RegisterPCIDriver: 1
EnablePCIERelaxedOrderingMode: 0
EnableResizableBar: 0
EnableGpuFirmware: 18
EnableGpuFirmwareLogs: 2
EnableDbgBreakpoint: 0
OpenRmEnableUnsupportedGpus: 0
DmaRemapPeerMmio: 1
RegistryDwords: \"\"
RegistryDwordsPerDevice: \"\"
RmMsg: \"\"
GpuBlacklist: \"\"
TemporaryFilePath: \"\"
ExcludedGpus: \"\"
";

pub(crate) const PROC_DEVICES: &str = "\
Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  4 ttyS
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
  7 vcs
 10 misc
 13 input
 29 fb
128 ptm
136 pts
180 usb
189 usb_device
195 nvidia
195 nvidia-modeset
195 nvidiactl
226 drm
508 nvidia-caps-imex-channels
510 nvidia-caps
511 nvidia-uvm

Block devices:
  7 loop
  8 sd
  9 md
 65 sd
259 blkext
";

/// `PROC_DEVICES` with extra character majors, in major order.
pub(crate) fn proc_devices(extra: &[(u32, &str)]) -> String {
    if extra.is_empty() {
        return PROC_DEVICES.to_string();
    }
    let (chars, block) = PROC_DEVICES
        .split_once("\nBlock devices:")
        .expect("PROC_DEVICES has a block section");
    let mut lines: Vec<(u32, String)> = chars
        .lines()
        .skip(1)
        .map(|l| {
            (
                l.trim().split(' ').next().unwrap().parse().unwrap(),
                l.to_string(),
            )
        })
        .collect();
    lines.extend(
        extra
            .iter()
            .map(|(major, name)| (*major, format!("{major:>3} {name}"))),
    );
    lines.sort_by_key(|(major, _)| *major);
    let mut text = String::from("Character devices:\n");
    for (_, line) in lines {
        text.push_str(&line);
        text.push('\n');
    }
    text + "\nBlock devices:" + block
}
