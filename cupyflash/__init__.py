"""cupyflash: FlashAttention for CuPy arrays, compiled at run time with NVRTC. No PyTorch needed."""
from .configs import DeviceLimits, NoConfigFits, TileConfig, select_fwd_config
from .forward import flash_attn_func, select_config_for
from .backward import flash_attn_backward, flash_attn_vjp
from ._mask import PreparedMask, prepare_mask
from ._dropout import Generator, default_generator, manual_seed
from .varlen import flash_attn_varlen_backward, flash_attn_varlen_func, flash_attn_varlen_vjp

__all__ = ["flash_attn_func", "flash_attn_backward", "flash_attn_vjp", "flash_attn_varlen_func",
           "flash_attn_varlen_backward", "flash_attn_varlen_vjp", "prepare_mask", "PreparedMask", "select_config_for",
           "select_fwd_config", "TileConfig", "DeviceLimits", "NoConfigFits", "Generator", "default_generator",
           "manual_seed"]
__version__ = "0.2.0"  # the only place the version is written (pyproject.toml reads it)
