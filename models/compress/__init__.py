"""Compression passes for trained tinyfoundry models: int8 / int4 (RTN, GPTQ) weight quantization,
magnitude / Wanda / 2:4 pruning, structured width pruning, and the report that compares them.

Pure torch (+ safetensors; torchao, tokenizers and matplotlib used when installed): never imports
lightning, train/ or data_pipelines/. Entry point: `run_compress`; compressed dirs load with
`load_compressed`.
"""

from models.compress.config import CompressConfig, PassConfig
from models.compress.runner import run_compress
from models.compress.storage import is_compressed_dir, load_compressed

__all__ = ["CompressConfig", "PassConfig", "run_compress", "load_compressed", "is_compressed_dir"]
