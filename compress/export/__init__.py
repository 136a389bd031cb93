"""Writing compressed models: plain HF checkpoints now; kernel-ready formats plug in beside them."""
from compress.export.atomic import atomic_directory, check_output_dir
from compress.export.hf import MANIFEST, save_checkpoint

__all__ = ["atomic_directory", "check_output_dir", "save_checkpoint", "MANIFEST"]
