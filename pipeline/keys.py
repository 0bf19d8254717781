"""Field names of one structure with their shapes and dtypes.

A structure is a :class:`pipeline.structures.Record` of numpy arrays (what readers give) or a
``torch_geometric.data.Data`` of tensors (what a data set gives a network, what a network
generates); both have exactly these fields. Every module that builds or reads a structure uses
these constants, so a renamed field is a one-line change. A ``Batch`` concatenates node and edge
rows and stacks graph rows, so the shapes below become ``(total_nodes, ...)`` and
``(num_graphs, ...)`` with ``batch: (total_nodes,)``.
"""

from __future__ import annotations

from typing import Final

# Every structure.
Z: Final = "z"  # (num_nodes,) int64 atomic numbers, all >= 1
POS: Final = "pos"  # (num_nodes, 3) float32 Cartesian coordinates in Angstrom

# Crystals only (a structure is a crystal iff it has LATTICE).
FRAC: Final = "frac"  # (num_nodes, 3) float32 fractional coordinates in [0, 1)
LATTICE: Final = "lattice"  # (1, 3, 3) float32, rows are the lattice vectors a, b, c in Angstrom

# Molecules, where the source has bonds (SDF, RDKit): both directions of every bond.
EDGE_INDEX: Final = "edge_index"  # (2, 2 * num_bonds) int64 atom indices within the structure
BOND_ORDER: Final = "bond_order"  # (2 * num_bonds,) float32: 1, 2, 3, or 1.5 (aromatic)
CHARGE: Final = "charge"  # (num_nodes,) int64 formal charges, present where the source has bonds

# Properties (QM9 targets, CDVAE columns); their names live in the data set card / reader.
Y: Final = "y"  # (1, P) float32

# Plain (non-tensor) attributes.
NAME: Final = "name"  # str, record id as the source gives it ("dsgdb9nsd_000001", "mp-1234")
SMILES: Final = "smiles"  # str, where the source gives one
# str, what a reader noticed but did not reject the record for ("; "-joined): a parser warning,
# symmetry generated from a space-group symbol, 2-D coordinates, isotopes read as the element.
# Only some records have one, so it stays out of STRING_KEYS: a StructureSet (the training
# cache) does not store it, and torch_geometric cannot batch a key that only some records have.
NOTE: Final = "note"

# Added by torch_geometric when structures are batched.
BATCH: Final = "batch"  # (total_nodes,) int64 graph index of each node
PTR: Final = "ptr"  # (num_graphs + 1,) int64 node offsets of the graphs

NODE_KEYS: Final = (Z, POS, FRAC, CHARGE)
EDGE_KEYS: Final = (EDGE_INDEX, BOND_ORDER)
GRAPH_KEYS: Final = (LATTICE, Y)
STRING_KEYS: Final = (NAME, SMILES)
TENSOR_KEYS: Final = NODE_KEYS + EDGE_KEYS + GRAPH_KEYS
