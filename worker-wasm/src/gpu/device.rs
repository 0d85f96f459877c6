//! The wgpu device and the dispatch of WGSL kernels: buffers in, passes, buffers out.
//!
//! One [`Job`] is one operator: a shader module (the `det` prelude, the common parameter
//! block and the kernel), its input arrays, the sizes of its output arrays and one or
//! more passes (an entry point, 16 parameter words and a thread count). Every pass of a
//! job binds the same buffers, so a pass can read what an earlier one wrote. The outputs
//! are copied to mappable buffers and read back: the trace commits every operator's
//! outputs, so they come back to the host anyway.

use std::collections::HashMap;
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
}

const DET: &str = include_str!("wgsl/det.wgsl");
const COMMON: &str = include_str!("wgsl/common.wgsl");
const WORKGROUP: u32 = 64;
const MAX_GROUPS_X: u32 = 65_535;

struct Compiled {
    layout: wgpu::BindGroupLayout,
    pipelines: HashMap<&'static str, wgpu::ComputePipeline>,
}

/// A wgpu device with its compiled kernels.
pub struct GpuDevice {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// The adapter's name, driver and backend, as the page shows them.
    pub description: String,
    /// Whether the adapter is a CPU implementation (lavapipe, SwiftShader).
    pub is_cpu: bool,
    kernels: Mutex<HashMap<&'static str, Arc<Compiled>>>,
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
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("lupus"),
                required_limits: wgpu::Limits {
                    max_storage_buffers_per_shader_stage: 8,
                    max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                    max_buffer_size: limits.max_buffer_size,
                    ..wgpu::Limits::downlevel_defaults()
                },
                ..Default::default()
            })
            .await
            .map_err(|e| GpuError::Device(e.to_string()))?;
        let description = format!(
            "{} ({}, {:?}, {:?})",
            info.name, info.driver, info.backend, info.device_type
        );
        Ok(GpuDevice {
            device,
            queue,
            description,
            is_cpu: info.device_type == wgpu::DeviceType::Cpu,
            kernels: Mutex::new(HashMap::new()),
        })
    }

    fn compiled(&self, k: &Kernel, entries: &[&'static str]) -> Arc<Compiled> {
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
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
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
        for i in 0..k.inputs {
            entries_l.push(storage(1 + i, true));
        }
        for o in 0..k.outputs {
            entries_l.push(storage(1 + k.inputs + o, false));
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
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let compiled = self.compiled(k, &entries);
        let in_bufs: Vec<wgpu::Buffer> = inputs
            .iter()
            .map(|data| {
                // A binding cannot be empty: a zero-length array gets one unused word.
                let bytes: Vec<u8> = if data.is_empty() {
                    vec![0u8; 4]
                } else {
                    data.iter()
                        .flat_map(|x| x.to_bits().to_le_bytes())
                        .collect()
                };
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("input"),
                        contents: &bytes,
                        usage: wgpu::BufferUsages::STORAGE,
                    })
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
        let staging: Vec<wgpu::Buffer> = out_bytes
            .iter()
            .map(|&size| {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(k.name),
            });
        let mut uniforms = Vec::with_capacity(passes.len());
        for pass in passes {
            let bytes: Vec<u8> = pass.params.iter().flat_map(|w| w.to_le_bytes()).collect();
            uniforms.push(
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("params"),
                        contents: &bytes,
                        usage: wgpu::BufferUsages::UNIFORM,
                    }),
            );
        }
        for (pass, uniform) in passes.iter().zip(&uniforms) {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }];
            for (i, b) in in_bufs.iter().chain(&out_bufs).enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: 1 + i as u32,
                    resource: b.as_entire_binding(),
                });
            }
            let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(k.name),
                layout: &compiled.layout,
                entries: &entries,
            });
            let Some(pipeline) = compiled.pipelines.get(pass.entry) else {
                return Err(GpuError::Kernel {
                    kernel: k.name,
                    detail: format!("no entry point `{}`", pass.entry),
                });
            };
            let groups = pass.params[0].div_ceil(WORKGROUP).max(1);
            let (gx, gy) = if groups > MAX_GROUPS_X {
                (MAX_GROUPS_X, groups.div_ceil(MAX_GROUPS_X))
            } else {
                (groups, 1)
            };
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
        if let Some(e) = scope.pop().await {
            return Err(GpuError::Kernel {
                kernel: k.name,
                detail: e.to_string(),
            });
        }
        let mut outs = Vec::with_capacity(staging.len());
        for (buf, &n) in staging.iter().zip(out_sizes) {
            outs.push(self.read(buf, n).await?);
        }
        Ok(outs)
    }

    async fn read(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>, GpuError> {
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
        let out = {
            let view = buf
                .get_mapped_range(..)
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            view.chunks_exact(4)
                .take(n)
                .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        };
        buf.unmap();
        Ok(out)
    }
}
