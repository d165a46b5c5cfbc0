"""Neighbour search: the one public pair-list function and its TorchScript module."""
from ._module import NeighborList
from ._neighbors import neighbor_list

__all__ = ["neighbor_list", "NeighborList"]
