//! The wgpu device and the dispatch of WGSL kernels: buffers in, passes, buffers out.
//!
//! One [`Job`] is one operator: a shader module (the `det` prelude, the common parameter
//! block and the kernel), its input arrays, the sizes of its output arrays and one or
//! more passes (an entry point, 16 parameter words and a thread count). Every pass of a
//! job binds the same buffers, so a pass can read what an earlier one wrote. [`GpuDevice::run`]
//! uploads a job's inputs and reads every output back (the per-operator path);
//! `super::whole` records many jobs over device-resident buffers into one submission
//! with the same compiled kernels, layouts and workgroup arithmetic.
//!
//! The device counts its transfers ([`Transfers`]): every read-back and upload goes
//! through [`GpuDevice::read_bytes`] and [`GpuDevice::upload`], so the benchmark can
//! print what crosses the bus per step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

/// Why the GPU path failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    #[error("no WebGPU/Vulkan adapter was found ({0}); the worker falls back to the CPU reference")]
    NoAdapter(String),
    #[error("the GPU adapter refused a device: {0}")]
    Device(String),
    #[error("reading a result back from the GPU failed: {0}")]
    Readback(String),
    #[error("the GPU reported an error while compiling or running `{kernel}`: {detail}")]
    Kernel {
        kernel: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Model(#[from] lupus_prover::model::ModelError),
    #[error("operator `{op}` got inputs the GPU path cannot run: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("the step produced a NaN or an infinity on the device; training diverged")]
    NonFinite,
    #[error("{0}")]
    Protocol(#[from] lupus_prover::task::ProtocolError),
}

/// A kernel's shader: its file and how many input and output arrays it binds.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    pub inputs: u32,
    pub outputs: u32,
}

/// One pass of a job.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    pub entry: &'static str,
    /// Word 0 is the number of threads.
    pub params: [u32; 16],
}

impl Pass {
    /// A pass of `groups` workgroups, for a kernel whose workgroups are not of 64
    /// threads (`matmul_rows.wgsl`): word 0 is `groups * 64`, so that the grid is
    /// [`workgroups`]'s for that many threads, and the kernel indexes by workgroup.
    pub fn groups(entry: &'static str, groups: usize, words: &[u32]) -> Pass {
        Pass::new(entry, groups * WORKGROUP as usize, words)
    }

    /// A pass of `threads` threads with parameters `words` after the thread count (at
    /// most 14: word 15 stays zero, the `det` functions' opaque one).
    pub fn new(entry: &'static str, threads: usize, words: &[u32]) -> Pass {
        let mut params = [0u32; 16];
        params[0] = threads as u32;
        for (p, w) in params.iter_mut().skip(1).take(14).zip(words) {
            *p = *w;
        }
        Pass { entry, params }
    }

    /// The parameter block as the uniform buffer holds it.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.params.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

const DET: &str = include_str!("wgsl/det.wgsl");
const COMMON: &str = include_str!("wgsl/common.wgsl");
const WORKGROUP: u32 = 64;
const MAX_GROUPS_X: u32 = 65_535;

/// The workgroup grid of a pass of `threads` threads (`common.wgsl`'s `thread_index`).
pub(crate) fn workgroups(threads: u32) -> (u32, u32) {
    let groups = threads.div_ceil(WORKGROUP).max(1);
    if groups > MAX_GROUPS_X {
        (MAX_GROUPS_X, groups.div_ceil(MAX_GROUPS_X))
    } else {
        (groups, 1)
    }
}

/// A kernel's bind group layout and one pipeline per entry point.
pub(crate) struct Compiled {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipelines: HashMap<&'static str, wgpu::ComputePipeline>,
}

/// What crossed between host and device since the device was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Buffers mapped and read back (GPU to CPU).
    pub reads: u64,
    /// Bytes read back.
    pub read_bytes: u64,
    /// Uploads (CPU to GPU): buffers created with contents and queue writes.
    pub writes: u64,
    /// Bytes uploaded.
    pub write_bytes: u64,
}

impl Transfers {
    /// The transfers between `earlier` and `self`.
    pub fn since(&self, earlier: &Transfers) -> Transfers {
        Transfers {
            reads: self.reads - earlier.reads,
            read_bytes: self.read_bytes - earlier.read_bytes,
            writes: self.writes - earlier.writes,
            write_bytes: self.write_bytes - earlier.write_bytes,
        }
    }
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
}

/// How the kernels that have two layouts lay out their work. Both give the reference's
/// bits; they differ only in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Workgroups of 64 threads, each thread its own block of the output: for a GPU.
    Gpu,
    /// For a CPU adapter (lavapipe, SwiftShader), which runs a workgroup's threads as
    /// SIMD lanes: small workgroups whose lanes share the rows they read, so that those
    /// loads are one address for every lane (`matmul_rows.wgsl`).
    Cpu,
}

/// A wgpu device with its compiled kernels.
pub struct GpuDevice {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// The adapter's name, driver and backend, as the page shows them.
    pub description: String,
    /// The kernels' layout: [`Layout::Cpu`] on a CPU adapter (lavapipe, SwiftShader),
    /// else [`Layout::Gpu`]. Tests
    /// set it to run the other layout on the same device.
    pub layout: Layout,
    kernels: Mutex<HashMap<&'static str, Arc<Compiled>>>,
    counters: Counters,
    /// `min_storage_buffer_offset_alignment` (bytes): where a bound region may start.
    pub(crate) storage_align: u64,
    /// `max_storage_buffer_binding_size` (bytes) of the device.
    pub(crate) max_binding: u64,
    /// `min_uniform_buffer_offset_alignment` (bytes): where a parameter block may start.
    pub(crate) uniform_align: u64,
}

impl GpuDevice {
    /// Finds an adapter (WebGPU in the browser, Vulkan natively) and opens a device.
    pub async fn new() -> Result<GpuDevice, GpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = if cfg!(target_arch = "wasm32") {
            wgpu::Backends::BROWSER_WEBGPU
        } else {
            wgpu::Backends::VULKAN
        };
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .map_err(|e| GpuError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 8,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            ..wgpu::Limits::downlevel_defaults()
        };
        let storage_align = u64::from(required_limits.min_storage_buffer_offset_alignment);
        let uniform_align = u64::from(required_limits.min_uniform_buffer_offset_alignment);
        let max_binding = required_limits.max_storage_buffer_binding_size;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lupus"),
                required_limits,
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        // Browsers may hide the adapter's name and driver (privacy): say so.
        let unnamed = |s: &str| {
            if s.is_empty() {
                "not disclosed".to_owned()
            } else {
                s.to_owned()
            }
        };
        let description = format!(
            "{} (driver {}, {:?}, {:?})",
            unnamed(&info.name),
            unnamed(&info.driver),
            info.backend,
            info.device_type
        );
        Ok(GpuDevice {
            device,
            queue,
            description,
            layout: if info.device_type == wgpu::DeviceType::Cpu {
                Layout::Cpu
            } else {
                Layout::Gpu
            },
            kernels: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            storage_align,
            max_binding,
            uniform_align,
        })
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The transfers so far.
    pub fn transfers(&self) -> Transfers {
        let c = &self.counters;
        Transfers {
            reads: c.reads.load(Ordering::Relaxed),
            read_bytes: c.read_bytes.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            write_bytes: c.write_bytes.load(Ordering::Relaxed),
        }
    }

    fn count_write(&self, bytes: usize) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .write_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A buffer holding `contents` (counted as an upload).
    pub(crate) fn upload(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.count_write(contents.len());
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
    }

    /// Writes `bytes` into `buffer` at `offset` before the next submission (an upload).
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.count_write(bytes.len());
        self.queue.write_buffer(buffer, offset, bytes);
    }

    /// A bind group of `k`'s layout: the parameter block at binding 0, then `storage`
    /// (the kernel's inputs, then its outputs).
    pub(crate) fn bind_group(
        &self,
        k: &Kernel,
        compiled: &Compiled,
        params: wgpu::BufferBinding<'_>,
        storage: &[wgpu::BufferBinding<'_>],
    ) -> wgpu::BindGroup {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(params),
        }];
        for (i, b) in storage.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + i as u32,
                resource: wgpu::BindingResource::Buffer(b.clone()),
            });
        }
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.name),
            layout: &compiled.layout,
            entries: &entries,
        })
    }

    /// Starts catching validation errors (shader compilation included); pair with
    /// [`GpuDevice::check`].
    pub(crate) fn scope(&self) -> wgpu::ErrorScopeGuard {
        self.device.push_error_scope(wgpu::ErrorFilter::Validation)
    }

    /// The first validation error since `scope` began, as the error of `kernel`.
    pub(crate) async fn check(
        &self,
        scope: wgpu::ErrorScopeGuard,
        kernel: &'static str,
    ) -> Result<(), GpuError> {
        match scope.pop().await {
            Some(e) => Err(GpuError::Kernel {
                kernel,
                detail: e.to_string(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn compiled(&self, k: &Kernel, entries: &[&'static str]) -> Arc<Compiled> {
        let mut cache = match self.kernels.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = cache.get(k.name)
            && entries.iter().all(|e| c.pipelines.contains_key(e))
        {
            return c.clone();
        }
        let source = format!("{DET}\n{COMMON}\n{}", k.source);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(k.name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        // Every storage binding is writable (`common.wgsl` says why).
        let storage = |binding: u32| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: false },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries_l = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for i in 0..k.inputs + k.outputs {
            entries_l.push(storage(1 + i));
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(k.name),
                entries: &entries_l,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(k.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let mut pipelines = HashMap::new();
        for &entry in entries {
            let p = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.name),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                });
            pipelines.insert(entry, p);
        }
        let c = Arc::new(Compiled { layout, pipelines });
        cache.insert(k.name, c.clone());
        c
    }

    /// Runs the passes of one job over `inputs` and returns its outputs (`out_sizes`
    /// elements each).
    pub async fn run(
        &self,
        k: &Kernel,
        passes: &[Pass],
        inputs: &[&[f32]],
        out_sizes: &[usize],
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        if inputs.len() != k.inputs as usize || out_sizes.len() != k.outputs as usize {
            return Err(GpuError::Kernel {
                kernel: k.name,
                detail: format!(
                    "{} inputs and {} outputs given for a kernel of {} and {}",
                    inputs.len(),
                    out_sizes.len(),
                    k.inputs,
                    k.outputs
                ),
            });
        }
        let entries: Vec<&'static str> = passes.iter().map(|p| p.entry).collect();
        // The scope also catches shader compilation errors (the first error is reported).
        let scope = self.scope();
        let compiled = self.compiled(k, &entries);
        let in_bufs: Vec<wgpu::Buffer> = inputs
            .iter()
            .map(|data| {
                // A binding cannot be empty: a zero-length array gets four unused words
                // (one `vec4`, which a vector kernel's binding must hold).
                let bytes: Vec<u8> = if data.is_empty() {
                    vec![0u8; 16]
                } else {
                    data.iter()
                        .flat_map(|x| x.to_bits().to_le_bytes())
                        .collect()
                };
                self.upload("input", &bytes, wgpu::BufferUsages::STORAGE)
            })
            .collect();
        let out_bytes: Vec<u64> = out_sizes.iter().map(|&n| (n.max(1) * 4) as u64).collect();
        let out_bufs: Vec<wgpu::Buffer> = out_bytes
            .iter()
            .map(|&size| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("output"),
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let staging: Vec<wgpu::Buffer> = out_bytes.iter().map(|&size| self.staging(size)).collect();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(k.name),
            });
        let uniforms: Vec<wgpu::Buffer> = passes
            .iter()
            .map(|pass| self.upload("params", &pass.bytes(), wgpu::BufferUsages::UNIFORM))
            .collect();
        let storage: Vec<wgpu::BufferBinding<'_>> = in_bufs
            .iter()
            .chain(&out_bufs)
            .map(|b| b.as_entire_buffer_binding())
            .collect();
        for (pass, uniform) in passes.iter().zip(&uniforms) {
            let group = self.bind_group(k, &compiled, uniform.as_entire_buffer_binding(), &storage);
            let Some(pipeline) = compiled.pipelines.get(pass.entry) else {
                return Err(GpuError::Kernel {
                    kernel: k.name,
                    detail: format!("no entry point `{}`", pass.entry),
                });
            };
            let (gx, gy) = workgroups(pass.params[0]);
            let mut cp = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(k.name),
                timestamp_writes: None,
            });
            cp.set_pipeline(pipeline);
            cp.set_bind_group(0, &group, &[]);
            cp.dispatch_workgroups(gx, gy, 1);
        }
        for ((src, dst), &size) in out_bufs.iter().zip(&staging).zip(&out_bytes) {
            encoder.copy_buffer_to_buffer(src, 0, dst, 0, size);
        }
        self.queue.submit([encoder.finish()]);
        self.check(scope, k.name).await?;
        let mut outs = Vec::with_capacity(staging.len());
        for (buf, &n) in staging.iter().zip(out_sizes) {
            let bytes = self.read_bytes(buf).await?;
            outs.push(
                bytes
                    .chunks_exact(4)
                    .take(n)
                    .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
            );
        }
        Ok(outs)
    }

    /// A buffer of `size` bytes that a copy can fill and the host can map.
    pub(crate) fn staging(&self, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps a staging buffer once its copies are done and returns its bytes (one
    /// GPU-to-CPU transfer). Natively this polls the device until the work is done; in
    /// the browser the map callback resolves the future, so nothing blocks.
    pub(crate) async fn read_bytes(&self, buf: &wgpu::Buffer) -> Result<Vec<u8>, GpuError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        buf.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        rx.await
            .map_err(|_| GpuError::Readback("the map callback was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = buf
            .get_mapped_range(..)
            .map_err(|e| GpuError::Readback(e.to_string()))?
            .to_vec();
        buf.unmap();
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .read_bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
}
