//! The facts procfs does not have, from the driver's own libraries (today's
//! only `dlopen` of host libraries).
//!
//! The CUDA version the driver supports comes from `cuDriverGetVersion` in
//! the driver root's libcuda; a GPU's compute capability and brand from NVML
//! (`libnvidia-ml.so.1`). Both are loaded with `dlopen` only when a
//! requirement term needs them ([`crate::requirements`]), from the driver
//! root's files (never from an image), and each at most once per process.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc;

use super::facts_cache::{DriverIdentity, FactsCache, FileIdentity, GpuFacts};
use super::facts_helper::{ask_beside_self, encode, Query};
use super::Driver;
use crate::request::{Capabilities, Capability};
use crate::requirements::Facts;

/// A `dlopen`ed library, kept loaded for the life of the process: libcuda
/// and NVML are not meant to be unloaded, and the runtime execs soon after.
struct Library {
    handle: *mut c_void,
    path: PathBuf,
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated string
    // owned by libc, valid until the next dl* call on this thread; we copy it
    // at once.
    unsafe {
        let message = libc::dlerror();
        if message.is_null() {
            "unknown dlopen error".to_string()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    }
}

impl Library {
    fn open(path: &Path) -> Result<Library, String> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
        // SAFETY: c_path is a valid NUL-terminated string; dlopen has no
        // other preconditions. The library comes from the admin's driver
        // root, never from a container image.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(format!(
                "cannot load {}: {}",
                path.display(),
                last_dl_error()
            ));
        }
        Ok(Library {
            handle,
            path: path.to_path_buf(),
        })
    }

    /// The address of `name`, or an error naming the library.
    fn symbol(&self, name: &str) -> Result<*mut c_void, String> {
        let c_name = CString::new(name).map_err(|_| format!("bad symbol name {name}"))?;
        // SAFETY: handle came from a successful dlopen and is never closed;
        // c_name is NUL-terminated.
        let address = unsafe { libc::dlsym(self.handle, c_name.as_ptr()) };
        if address.is_null() {
            return Err(format!("{} has no symbol {name}", self.path.display()));
        }
        Ok(address)
    }
}

type CuDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type NvmlInit = unsafe extern "C" fn() -> c_int;
type NvmlGetHandleByUuid = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
type NvmlGetComputeCapability = unsafe extern "C" fn(*mut c_void, *mut c_int, *mut c_int) -> c_int;
type NvmlGetBrand = unsafe extern "C" fn(*mut c_void, *mut c_int) -> c_int;
type NvmlGetUuid = unsafe extern "C" fn(*mut c_void, *mut c_char, c_uint) -> c_int;
type NvmlGetParent = unsafe extern "C" fn(*mut c_void, *mut *mut c_void) -> c_int;
type NvmlGetMigByIndex = unsafe extern "C" fn(*mut c_void, c_uint, *mut *mut c_void) -> c_int;
type NvmlGetInstanceId = unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_int;
type NvmlGetMaxMigCount = unsafe extern "C" fn(*mut c_void, *mut c_uint) -> c_int;

/// NVML_DEVICE_UUID_V2_BUFFER_SIZE.
const UUID_BUFFER: usize = 96;

/// NVML's `nvmlBrandType_t`, named as the `brand=` term spells them.
pub fn brand_name(brand: c_int) -> &'static str {
    match brand {
        1 => "quadro",
        2 => "tesla",
        3 => "nvs",
        4 => "grid",
        5 => "geforce",
        6 => "titan",
        7 => "nvidiavapps",
        8 => "nvidiavpc",
        9 => "nvidiavcs",
        10 => "nvidiavws",
        11 => "nvidiacloudgaming",
        12 => "quadrortx",
        13 => "nvidiartx",
        14 => "nvidia",
        15 => "geforcertx",
        16 => "titanrtx",
        _ => "unknown",
    }
}

/// `12040` -> `12.4`, as `cuDriverGetVersion` encodes it.
pub fn cuda_version_string(version: c_int) -> String {
    format!("{}.{}", version / 1000, (version % 1000) / 10)
}

/// A MIG device as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigInfo {
    pub uuid: String,
    pub parent_uuid: String,
    pub gpu_instance: u32,
    pub compute_instance: u32,
}

/// Host facts for the selected GPUs, each computed on first use.
pub struct HostFacts<'a> {
    driver: &'a Driver,
    /// UUIDs of the selected GPUs, in selection order (see [`HostFacts::select`]).
    gpu_uuids: Vec<String>,
    cuda: Option<Result<String, String>>,
    nvml: Option<Result<Library, String>>,
    /// `(arch, brand)` per selected GPU.
    gpu_facts: Vec<Option<(String, String)>>,
    /// Where the facts that change only with the driver are cached
    /// ([`super::facts_cache`]); `None`: not cached.
    cache_dir: Option<PathBuf>,
    /// The cache, read on first use.
    cache: Option<FactsCache>,
    /// Ask the helper process next to this program
    /// ([`super::facts_helper`]) rather than load the driver's libraries
    /// here. Its path is looked up only when a question is asked: a start
    /// that needs no fact pays nothing for it.
    use_helper: bool,
}

impl<'a> HostFacts<'a> {
    /// Facts computed in this process, not cached (`nvidia-ctk`).
    pub fn new(driver: &'a Driver) -> HostFacts<'a> {
        HostFacts {
            driver,
            gpu_uuids: Vec::new(),
            cuda: None,
            nvml: None,
            gpu_facts: Vec::new(),
            cache_dir: None,
            cache: None,
            use_helper: false,
        }
    }

    /// The runtime's and the hook's facts: cached in `state_dir` between
    /// processes, and what the cache lacks asked of the `helper` process
    /// (static binaries load no library themselves).
    pub fn for_runtime(driver: &'a Driver, state_dir: &Path) -> HostFacts<'a> {
        HostFacts {
            cache_dir: Some(state_dir.to_path_buf()),
            use_helper: true,
            ..HostFacts::new(driver)
        }
    }

    /// The cache for this driver's identity, read on first use; `None`
    /// when facts are not cached.
    fn cache(&mut self) -> Option<&mut FactsCache> {
        if self.cache.is_none() {
            let dir = self.cache_dir.as_ref()?;
            // One listing of the driver root's libraries for both files.
            let capabilities: Capabilities = [Capability::Compute, Capability::Utility]
                .into_iter()
                .collect();
            let libraries = self.driver.libraries(capabilities).unwrap_or_default();
            let identity_of = |soname: &str| {
                libraries
                    .iter()
                    .find(|library| library.soname == soname)
                    .and_then(|library| FileIdentity::of(&library.host_path))
            };
            let identity = DriverIdentity {
                kernel_module: self.driver.version.clone(),
                libcuda: identity_of("libcuda.so.1"),
                nvml: identity_of("libnvidia-ml.so.1"),
            };
            self.cache = Some(FactsCache::load(dir, identity));
        }
        self.cache.as_mut()
    }

    /// Sets the selected GPUs whose `arch`/`brand` requirement terms ask.
    pub fn select(&mut self, gpu_uuids: Vec<String>) {
        self.gpu_facts = vec![None; gpu_uuids.len()];
        self.gpu_uuids = gpu_uuids;
    }

    /// NVML, loaded on first use.
    fn nvml(&mut self) -> Result<&Library, String> {
        if self.nvml.is_none() {
            self.nvml = Some(self.load_nvml());
        }
        match &self.nvml {
            Some(Ok(nvml)) => Ok(nvml),
            Some(Err(error)) => Err(error.clone()),
            None => Err("NVML not loaded".to_string()),
        }
    }

    /// A device's UUID through NVML.
    fn device_uuid(nvml: &Library, device: *mut c_void) -> Result<String, String> {
        let get_uuid = nvml.symbol("nvmlDeviceGetUUID")?;
        // SAFETY: nvmlDeviceGetUUID(nvmlDevice_t, char *, unsigned) per
        // nvml.h; the pointer came from dlsym of that name.
        let get_uuid: NvmlGetUuid = unsafe { std::mem::transmute(get_uuid) };
        let mut buffer = [0 as c_char; UUID_BUFFER];
        // SAFETY: the buffer is UUID_BUFFER bytes long, as passed.
        let status = unsafe { get_uuid(device, buffer.as_mut_ptr(), UUID_BUFFER as c_uint) };
        if status != 0 {
            return Err(format!(
                "NVML cannot read a device UUID (NVML error {status})"
            ));
        }
        // SAFETY: NVML NUL-terminates within the buffer on success; the last
        // byte is still 0 from the initialisation in any case.
        Ok(unsafe { CStr::from_ptr(buffer.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    fn handle_by_uuid(nvml: &Library, uuid: &str) -> Result<*mut c_void, String> {
        let by_uuid = nvml.symbol("nvmlDeviceGetHandleByUUID")?;
        // SAFETY: NVML's documented signature; pointer from dlsym.
        let by_uuid: NvmlGetHandleByUuid = unsafe { std::mem::transmute(by_uuid) };
        let c_uuid = CString::new(uuid).map_err(|_| format!("bad UUID {uuid}"))?;
        let mut device: *mut c_void = std::ptr::null_mut();
        // SAFETY: c_uuid is NUL-terminated; device is a valid out-pointer.
        let status = unsafe { by_uuid(c_uuid.as_ptr(), &mut device) };
        if status != 0 {
            return Err(format!(
                "NVML does not know device {uuid} (NVML error {status})"
            ));
        }
        Ok(device)
    }

    /// GPU and compute instance ids of a MIG device handle.
    fn mig_info(nvml: &Library, mig: *mut c_void, parent_uuid: String) -> Result<MigInfo, String> {
        let gi = nvml.symbol("nvmlDeviceGetGpuInstanceId")?;
        let ci = nvml.symbol("nvmlDeviceGetComputeInstanceId")?;
        // SAFETY: NVML's documented signatures; pointers from dlsym.
        let (gi, ci) = unsafe {
            (
                std::mem::transmute::<*mut c_void, NvmlGetInstanceId>(gi),
                std::mem::transmute::<*mut c_void, NvmlGetInstanceId>(ci),
            )
        };
        let (mut gpu_instance, mut compute_instance): (c_uint, c_uint) = (0, 0);
        // SAFETY: mig came from NVML; out-pointers are valid.
        let status = unsafe { gi(mig, &mut gpu_instance) };
        if status != 0 {
            return Err(format!(
                "NVML cannot read a GPU instance id (NVML error {status})"
            ));
        }
        // SAFETY: as above.
        let status = unsafe { ci(mig, &mut compute_instance) };
        if status != 0 {
            return Err(format!(
                "NVML cannot read a compute instance id (NVML error {status})"
            ));
        }
        Ok(MigInfo {
            uuid: Self::device_uuid(nvml, mig)?,
            parent_uuid,
            gpu_instance,
            compute_instance,
        })
    }

    /// A MIG device by its `MIG-...` UUID.
    pub fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        if self.use_helper {
            return ask_beside_self(&self.driver.roots, &Query::MigByUuid(uuid.into()));
        }
        let nvml = self.nvml()?;
        let mig = Self::handle_by_uuid(nvml, uuid)?;
        let parent_of = nvml.symbol("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")?;
        // SAFETY: NVML's documented signature; pointer from dlsym.
        let parent_of: NvmlGetParent = unsafe { std::mem::transmute(parent_of) };
        let mut parent: *mut c_void = std::ptr::null_mut();
        // SAFETY: mig came from NVML; parent is a valid out-pointer.
        let status = unsafe { parent_of(mig, &mut parent) };
        if status != 0 {
            return Err(format!("{uuid} is not a MIG device (NVML error {status})"));
        }
        let parent_uuid = Self::device_uuid(nvml, parent)?;
        Self::mig_info(nvml, mig, parent_uuid)
    }

    /// The MIG device at `index` (NVML's MIG index order) of a GPU.
    pub fn mig_by_index(
        &mut self,
        parent_uuid: &str,
        index: u32,
    ) -> Result<Option<MigInfo>, String> {
        if self.use_helper {
            let query = Query::MigByIndex(parent_uuid.into(), index);
            return ask_beside_self(&self.driver.roots, &query);
        }
        let nvml = self.nvml()?;
        let parent = Self::handle_by_uuid(nvml, parent_uuid)?;
        let by_index = nvml.symbol("nvmlDeviceGetMigDeviceHandleByIndex")?;
        // SAFETY: NVML's documented signature; pointer from dlsym.
        let by_index: NvmlGetMigByIndex = unsafe { std::mem::transmute(by_index) };
        let mut mig: *mut c_void = std::ptr::null_mut();
        // SAFETY: parent came from NVML; mig is a valid out-pointer.
        let status = unsafe { by_index(parent, index, &mut mig) };
        // NVML_ERROR_NOT_FOUND (6) and INVALID_ARGUMENT (2): no such index.
        if status == 6 || status == 2 {
            return Ok(None);
        }
        if status != 0 {
            return Err(format!(
                "NVML cannot list the MIG devices of {parent_uuid} (NVML error {status})"
            ));
        }
        Self::mig_info(nvml, mig, parent_uuid.to_string()).map(Some)
    }

    /// Every MIG device of a GPU with its NVML MIG index, in index order.
    /// NVML's indices may have holes (a destroyed instance frees its slot),
    /// so every slot up to `nvmlDeviceGetMaxMigDeviceCount` is asked.
    pub fn mig_devices(&mut self, parent_uuid: &str) -> Result<Vec<(u32, MigInfo)>, String> {
        if self.use_helper {
            let query = Query::MigDevices(parent_uuid.into());
            return ask_beside_self(&self.driver.roots, &query);
        }
        let nvml = self.nvml()?;
        let parent = Self::handle_by_uuid(nvml, parent_uuid)?;
        let max_count = nvml.symbol("nvmlDeviceGetMaxMigDeviceCount")?;
        // SAFETY: NVML's documented signature; pointer from dlsym.
        let max_count: NvmlGetMaxMigCount = unsafe { std::mem::transmute(max_count) };
        let mut count: c_uint = 0;
        // SAFETY: parent came from NVML; count is a valid out-pointer.
        let status = unsafe { max_count(parent, &mut count) };
        if status != 0 {
            return Err(format!(
                "NVML cannot count the MIG devices of {parent_uuid} (NVML error {status})"
            ));
        }
        let mut devices = Vec::new();
        for index in 0..count {
            if let Some(mig) = self.mig_by_index(parent_uuid, index)? {
                devices.push((index, mig));
            }
        }
        Ok(devices)
    }

    /// The driver root's file for a SONAME, found like the runtime finds it.
    fn library_path(&self, soname: &str, capability: Capability) -> Result<PathBuf, String> {
        let capabilities: Capabilities = [capability].into_iter().collect();
        let libraries = self
            .driver
            .libraries(capabilities)
            .map_err(|e| e.to_string())?;
        libraries
            .into_iter()
            .find(|library| library.soname == soname)
            .map(|library| library.host_path)
            .ok_or_else(|| {
                format!(
                    "{soname} of driver {} not found under {}",
                    self.driver.version,
                    self.driver.roots.driver_root.display()
                )
            })
    }

    fn load_cuda_version(&self) -> Result<String, String> {
        if self.use_helper {
            return ask_beside_self(&self.driver.roots, &Query::CudaVersion);
        }
        let path = self.library_path("libcuda.so.1", Capability::Compute)?;
        tracing::info!("loading {} for cuDriverGetVersion", path.display());
        let library = Library::open(&path)?;
        let address = library.symbol("cuDriverGetVersion")?;
        // SAFETY: cuDriverGetVersion has this C signature in every CUDA
        // driver (cuda.h); the pointer came from dlsym of that name.
        let get_version: CuDriverGetVersion = unsafe { std::mem::transmute(address) };
        let mut version: c_int = 0;
        // SAFETY: version is a valid out-pointer for the call's duration.
        let status = unsafe { get_version(&mut version) };
        if status != 0 {
            return Err(format!(
                "cuDriverGetVersion failed with CUDA error {status}"
            ));
        }
        // Keep libcuda loaded: unloading it is not supported by the driver.
        std::mem::forget(library);
        Ok(cuda_version_string(version))
    }

    fn load_nvml(&self) -> Result<Library, String> {
        let path = self.library_path("libnvidia-ml.so.1", Capability::Utility)?;
        tracing::info!("loading NVML from {}", path.display());
        let library = Library::open(&path)?;
        let init = library
            .symbol("nvmlInit_v2")
            .or_else(|_| library.symbol("nvmlInit"))?;
        // SAFETY: nvmlInit_v2/nvmlInit take no arguments and return
        // nvmlReturn_t (nvml.h); the pointer came from dlsym.
        let init: NvmlInit = unsafe { std::mem::transmute(init) };
        // SAFETY: no arguments.
        let status = unsafe { init() };
        if status != 0 {
            return Err(format!("nvmlInit failed with NVML error {status}"));
        }
        Ok(library)
    }

    fn gpu_facts(&mut self, gpu: usize) -> Result<(String, String), String> {
        if let Some(Some(facts)) = self.gpu_facts.get(gpu) {
            return Ok(facts.clone());
        }
        let uuid = self
            .gpu_uuids
            .get(gpu)
            .cloned()
            .ok_or_else(|| format!("no selected GPU {gpu}"))?;
        let cached = self
            .cache()
            .and_then(|cache| cache.gpu(&uuid))
            .map(|facts| (facts.arch.clone(), facts.brand.clone()));
        let facts = match cached {
            Some(facts) => facts,
            None => {
                let facts = self.load_gpu_facts(&uuid)?;
                if let Some(cache) = self.cache() {
                    cache.set_gpu(
                        &uuid,
                        GpuFacts {
                            arch: facts.0.clone(),
                            brand: facts.1.clone(),
                        },
                    );
                }
                facts
            }
        };
        if let Some(slot) = self.gpu_facts.get_mut(gpu) {
            *slot = Some(facts.clone());
        }
        Ok(facts)
    }

    /// A GPU's compute capability and brand, from NVML.
    fn load_gpu_facts(&mut self, uuid: &str) -> Result<(String, String), String> {
        if self.use_helper {
            let facts: GpuFacts =
                ask_beside_self(&self.driver.roots, &Query::GpuFacts(uuid.into()))?;
            return Ok((facts.arch, facts.brand));
        }
        let nvml = self.nvml()?;
        let device = Self::handle_by_uuid(nvml, uuid)?;
        let capability = nvml.symbol("nvmlDeviceGetCudaComputeCapability")?;
        let brand = nvml.symbol("nvmlDeviceGetBrand")?;
        // SAFETY: these are NVML's documented C signatures (nvml.h), the
        // pointers came from dlsym of those names.
        let (capability, brand) = unsafe {
            (
                std::mem::transmute::<*mut c_void, NvmlGetComputeCapability>(capability),
                std::mem::transmute::<*mut c_void, NvmlGetBrand>(brand),
            )
        };
        let (mut major, mut minor, mut brand_value): (c_int, c_int, c_int) = (0, 0, 0);
        // SAFETY: device came from NVML; the out-pointers are valid.
        let status = unsafe { capability(device, &mut major, &mut minor) };
        if status != 0 {
            return Err(format!(
                "NVML cannot read the compute capability of {uuid} (NVML error {status})"
            ));
        }
        // SAFETY: as above.
        let status = unsafe { brand(device, &mut brand_value) };
        if status != 0 {
            return Err(format!(
                "NVML cannot read the brand of {uuid} (NVML error {status})"
            ));
        }
        Ok((
            format!("{major}.{minor}"),
            brand_name(brand_value).to_string(),
        ))
    }
}

/// Answers `query` in this process, as the helper's reply line
/// ([`super::facts_helper`]): the helper binary's work.
pub fn answer(driver: &Driver, query: &Query) -> String {
    fn json<T: serde::Serialize>(value: T) -> Result<serde_json::Value, String> {
        serde_json::to_value(value).map_err(|error| error.to_string())
    }
    let mut facts = HostFacts::new(driver);
    let result = match query {
        Query::CudaVersion => facts.cuda_version().and_then(json),
        Query::GpuFacts(uuid) => {
            facts.select(vec![uuid.clone()]);
            facts.arch(0).and_then(|arch| {
                let brand = facts.brand(0)?;
                json(GpuFacts { arch, brand })
            })
        }
        Query::MigByUuid(uuid) => facts.mig_by_uuid(uuid).and_then(json),
        Query::MigByIndex(uuid, index) => facts.mig_by_index(uuid, *index).and_then(json),
        Query::MigDevices(uuid) => facts.mig_devices(uuid).and_then(json),
    };
    encode(result)
}

/// How MIG devices are looked up (NVML, loaded lazily, in the runtime).
pub trait MigLookup {
    /// A MIG device by its `MIG-...` UUID.
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String>;
    /// The MIG device at `index` of the GPU with `parent_uuid`; `Ok(None)`
    /// when there is none at that index.
    fn mig_by_index(&mut self, parent_uuid: &str, index: u32) -> Result<Option<MigInfo>, String>;
}

impl MigLookup for HostFacts<'_> {
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        HostFacts::mig_by_uuid(self, uuid)
    }
    fn mig_by_index(&mut self, parent_uuid: &str, index: u32) -> Result<Option<MigInfo>, String> {
        HostFacts::mig_by_index(self, parent_uuid, index)
    }
}

impl Facts for HostFacts<'_> {
    fn cuda_version(&mut self) -> Result<String, String> {
        if self.cuda.is_none() {
            let cached = self
                .cache()
                .and_then(|cache| cache.cuda_version().map(str::to_string));
            self.cuda = Some(match cached {
                Some(version) => Ok(version),
                None => {
                    let loaded = self.load_cuda_version();
                    if let (Ok(version), Some(cache)) = (&loaded, self.cache()) {
                        cache.set_cuda_version(version);
                    }
                    loaded
                }
            });
        }
        self.cuda
            .clone()
            .unwrap_or_else(|| Err("CUDA version not loaded".to_string()))
    }

    fn driver_version(&mut self) -> Result<String, String> {
        Ok(self.driver.version.clone())
    }

    fn arch(&mut self, gpu: usize) -> Result<String, String> {
        self.gpu_facts(gpu).map(|(arch, _)| arch)
    }

    fn brand(&mut self, gpu: usize) -> Result<String, String> {
        self.gpu_facts(gpu).map(|(_, brand)| brand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(cuda_version_string(12040), "12.4");
        assert_eq!(cuda_version_string(11080), "11.8");
        assert_eq!(cuda_version_string(12000), "12.0");
        assert_eq!(brand_name(2), "tesla");
        assert_eq!(brand_name(99), "unknown");
    }
}
