"""Sparse weights at run time: the compressed N:M format, SparseLinear, and the 6:8 slide decomposition."""
from compress.kernels.nm_format import check_nm, pack_nm, unpack_nm
from compress.kernels.slide import lift, lift_index, slide_expand
from compress.kernels.sparse_linear import SparseLinear

__all__ = ["pack_nm", "unpack_nm", "check_nm", "SparseLinear", "slide_expand", "lift", "lift_index"]
