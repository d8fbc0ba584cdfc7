//! SageMaker training instance types, for the `job.instance_type` check.
//!
//! From the SageMaker `CreateTrainingJob` API reference (`ResourceConfig.InstanceType`
//! enum). Update this list when AWS adds a family; the validator suggests the
//! closest entry for a typo.

pub const TRAINING_INSTANCE_TYPES: &[&str] = &[
    "ml.m4.xlarge",
    "ml.m4.2xlarge",
    "ml.m4.4xlarge",
    "ml.m4.10xlarge",
    "ml.m4.16xlarge",
    "ml.m5.large",
    "ml.m5.xlarge",
    "ml.m5.2xlarge",
    "ml.m5.4xlarge",
    "ml.m5.12xlarge",
    "ml.m5.24xlarge",
    "ml.m6i.large",
    "ml.m6i.xlarge",
    "ml.m6i.2xlarge",
    "ml.m6i.4xlarge",
    "ml.m6i.8xlarge",
    "ml.m6i.12xlarge",
    "ml.m6i.16xlarge",
    "ml.m6i.24xlarge",
    "ml.m6i.32xlarge",
    "ml.m7i.large",
    "ml.m7i.xlarge",
    "ml.m7i.2xlarge",
    "ml.m7i.4xlarge",
    "ml.m7i.8xlarge",
    "ml.m7i.12xlarge",
    "ml.m7i.16xlarge",
    "ml.m7i.24xlarge",
    "ml.m7i.48xlarge",
    "ml.c4.xlarge",
    "ml.c4.2xlarge",
    "ml.c4.4xlarge",
    "ml.c4.8xlarge",
    "ml.c5.xlarge",
    "ml.c5.2xlarge",
    "ml.c5.4xlarge",
    "ml.c5.9xlarge",
    "ml.c5.18xlarge",
    "ml.c5n.xlarge",
    "ml.c5n.2xlarge",
    "ml.c5n.4xlarge",
    "ml.c5n.9xlarge",
    "ml.c5n.18xlarge",
    "ml.c6i.xlarge",
    "ml.c6i.2xlarge",
    "ml.c6i.4xlarge",
    "ml.c6i.8xlarge",
    "ml.c6i.12xlarge",
    "ml.c6i.16xlarge",
    "ml.c6i.24xlarge",
    "ml.c6i.32xlarge",
    "ml.c7i.large",
    "ml.c7i.xlarge",
    "ml.c7i.2xlarge",
    "ml.c7i.4xlarge",
    "ml.c7i.8xlarge",
    "ml.c7i.12xlarge",
    "ml.c7i.16xlarge",
    "ml.c7i.24xlarge",
    "ml.c7i.48xlarge",
    "ml.r5.large",
    "ml.r5.xlarge",
    "ml.r5.2xlarge",
    "ml.r5.4xlarge",
    "ml.r5.8xlarge",
    "ml.r5.12xlarge",
    "ml.r5.16xlarge",
    "ml.r5.24xlarge",
    "ml.p2.xlarge",
    "ml.p2.8xlarge",
    "ml.p2.16xlarge",
    "ml.p3.2xlarge",
    "ml.p3.8xlarge",
    "ml.p3.16xlarge",
    "ml.p3dn.24xlarge",
    "ml.p4d.24xlarge",
    "ml.p4de.24xlarge",
    "ml.p5.48xlarge",
    "ml.p5e.48xlarge",
    "ml.p5en.48xlarge",
    "ml.g4dn.xlarge",
    "ml.g4dn.2xlarge",
    "ml.g4dn.4xlarge",
    "ml.g4dn.8xlarge",
    "ml.g4dn.12xlarge",
    "ml.g4dn.16xlarge",
    "ml.g5.xlarge",
    "ml.g5.2xlarge",
    "ml.g5.4xlarge",
    "ml.g5.8xlarge",
    "ml.g5.12xlarge",
    "ml.g5.16xlarge",
    "ml.g5.24xlarge",
    "ml.g5.48xlarge",
    "ml.g6.xlarge",
    "ml.g6.2xlarge",
    "ml.g6.4xlarge",
    "ml.g6.8xlarge",
    "ml.g6.12xlarge",
    "ml.g6.16xlarge",
    "ml.g6.24xlarge",
    "ml.g6.48xlarge",
    "ml.g6e.xlarge",
    "ml.g6e.2xlarge",
    "ml.g6e.4xlarge",
    "ml.g6e.8xlarge",
    "ml.g6e.12xlarge",
    "ml.g6e.16xlarge",
    "ml.g6e.24xlarge",
    "ml.g6e.48xlarge",
    "ml.trn1.2xlarge",
    "ml.trn1.32xlarge",
    "ml.trn1n.32xlarge",
];

/// An NVIDIA GPU model, as far as the `cuda` build cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub name: &'static str,
    /// Compute capability times ten (`70` is 7.0).
    pub compute_capability: u32,
}

/// The oldest GPU generation the training image's GPU kernels can be built
/// for: Ampere, compute capability 8.0. CUDA 13 (the image's toolkit) dropped
/// Maxwell, Pascal and Volta, and dfdx 0.13's kernels do not compile for
/// Turing (7.5) with it: their half-precision shims for GPUs before 8.0
/// redefine functions CUDA 13's headers now define for every generation.
pub const MIN_CUDA_COMPUTE_CAPABILITY: u32 = 80;

/// The GPU of each SageMaker GPU instance family (from the instance types'
/// specifications; every `ml.p*` and `ml.g*` type above must be covered, a
/// test checks it).
const GPU_FAMILIES: &[(&str, Gpu)] = &[
    ("ml.p2.", gpu("NVIDIA K80", 37)),
    ("ml.p3.", gpu("NVIDIA V100", 70)),
    ("ml.p3dn.", gpu("NVIDIA V100", 70)),
    ("ml.g4dn.", gpu("NVIDIA T4", 75)),
    ("ml.p4d.", gpu("NVIDIA A100", 80)),
    ("ml.p4de.", gpu("NVIDIA A100", 80)),
    ("ml.g5.", gpu("NVIDIA A10G", 86)),
    ("ml.g6.", gpu("NVIDIA L4", 89)),
    ("ml.g6e.", gpu("NVIDIA L40S", 89)),
    ("ml.p5.", gpu("NVIDIA H100", 90)),
    ("ml.p5e.", gpu("NVIDIA H200", 90)),
    ("ml.p5en.", gpu("NVIDIA H200", 90)),
];

const fn gpu(name: &'static str, compute_capability: u32) -> Gpu {
    Gpu {
        name,
        compute_capability,
    }
}

/// The NVIDIA GPU of instance type `t`, `None` for a type without one.
pub fn gpu_of(t: &str) -> Option<Gpu> {
    GPU_FAMILIES
        .iter()
        .find(|(family, _)| t.starts_with(family))
        .map(|(_, g)| *g)
}

/// A compute capability times ten (`86`) as NVIDIA writes it (`8.6`).
pub fn compute_capability_text(c: u32) -> String {
    format!("{}.{}", c / 10, c % 10)
}

/// The instance families whose GPU the training image can run on, for messages:
/// `ml.p4d.*, ml.p4de.*, ml.g5.*, ...`.
pub fn cuda_capable_families() -> String {
    GPU_FAMILIES
        .iter()
        .filter(|(_, g)| g.compute_capability >= MIN_CUDA_COMPUTE_CAPABILITY)
        .map(|(f, _)| format!("{f}*"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_families() {
        for t in ["ml.p3.2xlarge", "ml.g5.xlarge", "ml.p5.48xlarge"] {
            assert!(gpu_of(t).is_some(), "{t}");
        }
        for t in ["ml.m5.xlarge", "ml.c5.2xlarge", "ml.trn1.2xlarge"] {
            assert!(gpu_of(t).is_none(), "{t}");
        }
        // Families end in a dot: `ml.p3.` does not take `ml.p3dn.` types.
        assert_eq!(gpu_of("ml.p3dn.24xlarge").unwrap().compute_capability, 70);
        assert_eq!(gpu_of("ml.p5en.48xlarge").unwrap().name, "NVIDIA H200");
        assert_eq!(gpu_of("ml.g6e.xlarge").unwrap().name, "NVIDIA L40S");
        assert_eq!(gpu_of("ml.g6.xlarge").unwrap().name, "NVIDIA L4");
        assert_eq!(gpu_of("ml.p3.2xlarge").unwrap().compute_capability, 70);
        assert_eq!(compute_capability_text(86), "8.6");
        assert_eq!(compute_capability_text(100), "10.0");
    }

    #[test]
    fn every_gpu_instance_type_has_its_gpu_listed() {
        for t in TRAINING_INSTANCE_TYPES {
            if t.starts_with("ml.p") || t.starts_with("ml.g") {
                assert!(gpu_of(t).is_some(), "{t}: add its family to GPU_FAMILIES");
            }
        }
        // Each family names at least one listed type (no stale entries).
        for (family, _) in GPU_FAMILIES {
            assert!(
                TRAINING_INSTANCE_TYPES
                    .iter()
                    .any(|t| t.starts_with(family)),
                "{family}"
            );
        }
    }

    #[test]
    fn cuda_capable_families_leave_out_gpus_older_than_ampere() {
        let f = cuda_capable_families();
        assert!(f.contains("ml.g5.*") && f.contains("ml.p5.*"), "{f}");
        for old in ["ml.p2.", "ml.p3", "ml.g4dn."] {
            assert!(!f.contains(old), "{f}");
        }
    }

    #[test]
    fn the_default_instance_type_suits_the_default_device() {
        let job = crate::types::Job::default();
        assert!(TRAINING_INSTANCE_TYPES.contains(&job.instance_type.as_str()));
        assert_eq!(
            crate::types::Train::default().device,
            crate::types::Device::Cpu
        );
        assert_eq!(
            gpu_of(&job.instance_type),
            None,
            "a default GPU instance would train on its CPUs, its GPU paid for and idle"
        );
    }
}
