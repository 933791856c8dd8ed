//! Which GPUs and MIG devices a request selects on this driver.

use crate::driver::{Driver, Gpu, MigDevice, MigLookup};
use crate::request::{DeviceId, Devices, Request};

use super::EditsError;

/// What a request selects: whole GPUs and MIG devices, in the order asked,
/// without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection<'a> {
    pub gpus: Vec<&'a Gpu>,
    pub migs: Vec<MigDevice>,
}

impl<'a> Selection<'a> {
    /// Every GPU involved: whole GPUs and MIG parents, each once, in order.
    pub fn physical_gpus(&self, driver: &'a Driver) -> Vec<&'a Gpu> {
        let mut gpus: Vec<&Gpu> = self.gpus.clone();
        for mig in &self.migs {
            if let Some(parent) = driver.gpus.get(mig.parent_index) {
                if !gpus.iter().any(|g| g.index == parent.index) {
                    gpus.push(parent);
                }
            }
        }
        gpus
    }
}

/// Resolves a request's devices. MIG devices need NVML (`mig`), which is
/// asked only when the request names one.
pub fn select_devices<'a>(
    driver: &'a Driver,
    request: &Request,
    mig: &mut dyn MigLookup,
) -> Result<Selection<'a>, EditsError> {
    let ids = match &request.devices {
        Devices::All => {
            return Ok(Selection {
                gpus: driver.gpus.iter().collect(),
                migs: Vec::new(),
            })
        }
        Devices::NoGpu => return Ok(Selection::default()),
        Devices::List(ids) => ids,
    };
    let unknown = |id: &DeviceId| EditsError::UnknownGpu {
        source_name: request.devices_source.clone(),
        device: id.to_string(),
        available: describe_gpus(driver, id),
    };
    let mig_error = |id: &DeviceId, problem: String| EditsError::MigLookup {
        source_name: request.devices_source.clone(),
        device: id.to_string(),
        problem,
    };
    let mut selection = Selection::default();
    for id in ids {
        let info = match id {
            DeviceId::MigUuid(uuid) => mig.mig_by_uuid(uuid).map_err(|e| mig_error(id, e))?,
            DeviceId::MigIndex { gpu, mig: index } => {
                let parent = driver.gpus.get(*gpu as usize).ok_or_else(|| unknown(id))?;
                mig.mig_by_index(&parent.uuid, *index)
                    .map_err(|e| mig_error(id, e))?
                    .ok_or_else(|| mig_error(id, format!("GPU {gpu} has no MIG device {index}")))?
            }
            _ => {
                let gpu = driver
                    .gpus
                    .iter()
                    .find(|gpu| match id {
                        DeviceId::Index(index) => gpu.index == *index as usize,
                        DeviceId::Uuid(uuid) => gpu.uuid.eq_ignore_ascii_case(uuid),
                        DeviceId::BusId(bus) => gpu.bus_id == *bus,
                        DeviceId::MigUuid(_) | DeviceId::MigIndex { .. } => false,
                    })
                    .ok_or_else(|| unknown(id))?;
                if !selection.gpus.iter().any(|s| s.index == gpu.index) {
                    selection.gpus.push(gpu);
                }
                continue;
            }
        };
        let parent_index = driver
            .gpus
            .iter()
            .position(|gpu| gpu.uuid.eq_ignore_ascii_case(&info.parent_uuid))
            .ok_or_else(|| {
                mig_error(
                    id,
                    format!(
                        "its parent GPU {} is not in the driver's procfs",
                        info.parent_uuid
                    ),
                )
            })?;
        let device = MigDevice {
            parent_index,
            gpu_instance: info.gpu_instance,
            compute_instance: info.compute_instance,
            uuid: info.uuid,
        };
        if !selection.migs.contains(&device) {
            selection.migs.push(device);
        }
    }
    Ok(selection)
}

/// "GPUs 0-1", "GPU 0", "no GPU", or the UUIDs / bus ids when the user named
/// a GPU that way.
fn describe_gpus(driver: &Driver, asked: &DeviceId) -> String {
    let count = driver.gpus.len();
    match (count, asked) {
        (0, _) => "no GPU (the driver lists none in its procfs)".to_string(),
        (_, DeviceId::Uuid(_)) => format!(
            "GPUs {}",
            driver
                .gpus
                .iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, DeviceId::BusId(_)) => format!(
            "GPUs at {}",
            driver
                .gpus
                .iter()
                .map(|g| g.bus_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (1, _) => "GPU 0".to_string(),
        (_, _) => format!("GPUs 0-{}", count - 1),
    }
}
