"""Converters between a structure (:mod:`pipeline.structures`) and RDKit, ASE, pymatgen.

``to_X`` reads a :class:`~pipeline.structures.Record` or a ``torch_geometric`` ``Data`` (the
fields of :mod:`pipeline.keys`, through ``numpy.asarray``); ``from_X`` gives a Record. Round trips
are lossless: ``from_X(to_X(d))`` gives back the same arrays bit for bit (float32 values survive
float64 exactly; fractional coordinates are handed over as such, never re-derived from Cartesian
ones). The other direction keeps what a record can hold: elements, coordinates, cell, bonds with
their orders and formal charges (not stereo flags, isotopes or partial occupancy).
"""

from __future__ import annotations

import numpy as np

from pipeline import keys as K
from pipeline.structures import MAX_Z, Record, is_crystal, make_crystal, make_molecule

RDKIT_BOND_ORDERS = {"SINGLE": 1.0, "DOUBLE": 2.0, "TRIPLE": 3.0, "AROMATIC": 1.5}

# ---------------------------------------------------------------------------------------------
# RDKit
# ---------------------------------------------------------------------------------------------


def to_rdkit(data: Record):
    """A molecule -> ``rdkit.Chem.Mol`` with one conformer, bonds and formal charges.

    Atoms are ``NoImplicit`` so RDKit adds no hydrogens the record does not have. One without
    ``edge_index`` gives a Mol without bonds. The Mol is not sanitised (that is a validity check,
    see ``pipeline.molecule_checks``); ring info and valences are computed leniently.
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    z = np.asarray(data.z).tolist()
    pos = np.asarray(data.pos, dtype=np.float64)
    charge = getattr(data, K.CHARGE, None)
    charge = [0] * len(z) if charge is None else np.asarray(charge).tolist()
    mol = Chem.RWMol()
    for atomic_number, q in zip(z, charge, strict=True):
        atom = Chem.Atom(int(atomic_number))
        atom.SetFormalCharge(int(q))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    edge_index = getattr(data, K.EDGE_INDEX, None)
    if edge_index is not None:
        types = {v: getattr(Chem.BondType, k) for k, v in RDKIT_BOND_ORDERS.items()}
        pairs = np.asarray(edge_index).T.tolist()
        for (i, j), order in zip(pairs, np.asarray(data.bond_order).tolist(), strict=True):
            if i < j:
                mol.AddBond(int(i), int(j), types[float(order)])
                if order == 1.5:
                    mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
                    mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
                    mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
    conf = Chem.Conformer(len(z))
    for k, (x, y, zz) in enumerate(pos):
        conf.SetAtomPosition(k, Point3D(float(x), float(y), float(zz)))
    conf.Set3D(True)
    mol = mol.GetMol()
    mol.AddConformer(conf, assignId=True)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    mol.SetProp("_Name", str(getattr(data, K.NAME, "")))
    smiles = getattr(data, K.SMILES, None)
    if smiles is not None:
        mol.SetProp("smiles", smiles)
    return mol


def from_rdkit(mol, name: str | None = None) -> Record:
    """``rdkit.Chem.Mol`` with a conformer -> a molecule Record with bonds and formal charges.

    Only the atoms in the Mol become nodes: implicit hydrogens are not invented. Bond k gives edge
    columns 2k = (i, j) and 2k + 1 = (j, i) with i < j, which :func:`to_rdkit` reads back in the
    same order. Raises
    ``ValueError`` for a Mol without conformer or with a bond type other than single, double,
    triple or aromatic.
    """
    if mol.GetNumConformers() == 0:
        raise ValueError("molecule has no 3-D conformer")
    z = [a.GetAtomicNum() for a in mol.GetAtoms()]
    charge = [a.GetFormalCharge() for a in mol.GetAtoms()]
    pos = mol.GetConformer().GetPositions()
    rows, orders = [], []
    for bond in mol.GetBonds():
        kind = str(bond.GetBondType())
        if kind not in RDKIT_BOND_ORDERS:
            raise ValueError(f"unsupported bond type {kind}")
        i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        rows += [(i, j), (j, i)]
        orders += [RDKIT_BOND_ORDERS[kind]] * 2
    edge_index = np.array(rows, dtype=np.int64).reshape(-1, 2).T
    if name is None:
        name = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
    smiles = mol.GetProp("smiles") if mol.HasProp("smiles") else None
    return make_molecule(
        z, pos, name=name, edge_index=edge_index, bond_order=orders, charge=charge, smiles=smiles
    )


# ---------------------------------------------------------------------------------------------
# ASE
# ---------------------------------------------------------------------------------------------


def to_ase(data: Record):
    """A structure -> ``ase.Atoms``; crystals get ``cell = lattice`` and ``pbc = True``.

    The name (and SMILES) go to ``atoms.info``; ``y`` to ``atoms.info["y"]`` as a (P,) array.
    """
    from ase import Atoms

    info = {"name": str(getattr(data, K.NAME, ""))}
    smiles = getattr(data, K.SMILES, None)
    if smiles is not None:
        info["smiles"] = smiles
    y = getattr(data, K.Y, None)
    if y is not None:
        info["y"] = np.asarray(y, dtype=np.float64).reshape(-1)
    z = np.asarray(data.z)
    if is_crystal(data):
        return Atoms(
            numbers=z,
            scaled_positions=np.asarray(data.frac, dtype=np.float64),
            cell=np.asarray(data.lattice, dtype=np.float64).reshape(3, 3),
            pbc=True,
            info=info,
        )
    return Atoms(numbers=z, positions=np.asarray(data.pos, dtype=np.float64), info=info)


def from_ase(atoms, name: str | None = None) -> Record:
    """``ase.Atoms`` -> Record: a crystal when all three directions are periodic, else a molecule.

    Raises ``ValueError`` for partial periodicity (slabs, wires), which neither kind represents.
    """
    info = atoms.info
    name = str(info.get("name", "")) if name is None else name
    y = info.get("y")
    y = None if y is None else np.atleast_1d(np.asarray(y, dtype=np.float64))
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        frac = atoms.get_scaled_positions(wrap=False)
        # ASE re-derives fractions by a float64 solve: a coordinate that was exactly 0 comes back
        # as ~1e-33, which float32 can hold; snap that solver noise so round trips are exact.
        frac[np.abs(frac) < 1e-12] = 0.0
        return make_crystal(
            atoms.numbers,
            frac,
            atoms.cell.array,
            name=name,
            y=y,
        )
    if pbc.any():
        raise ValueError(f"partially periodic structure (pbc={pbc.tolist()}) is not supported")
    smiles = info.get("smiles")
    return make_molecule(atoms.numbers, atoms.positions, name=name, y=y, smiles=smiles)


# ---------------------------------------------------------------------------------------------
# pymatgen
# ---------------------------------------------------------------------------------------------


def to_pymatgen(data: Record):
    """A structure -> ``pymatgen.core.Structure`` (crystal, fractional coordinates) or
    ``Molecule``."""
    from pymatgen.core import Lattice, Molecule, Structure

    species = np.asarray(data.z).tolist()
    props = {"name": str(getattr(data, K.NAME, ""))}
    if is_crystal(data):
        return Structure(
            Lattice(np.asarray(data.lattice, dtype=np.float64).reshape(3, 3)),
            species,
            np.asarray(data.frac, dtype=np.float64),
            coords_are_cartesian=False,
            properties=props,
        )
    return Molecule(species, np.asarray(data.pos, dtype=np.float64), properties=props)


def from_pymatgen(obj, name: str | None = None) -> Record:
    """``pymatgen`` ``Structure`` / ``Molecule`` -> Record.

    Raises ``ValueError`` for a disordered structure (partial occupancy) or a dummy species.
    """
    from pymatgen.core import Structure

    if not obj.is_ordered:
        raise ValueError("disordered structure (partial occupancies) is not supported")
    z = []
    for site in obj:
        number = getattr(site.specie, "Z", 0)
        if not 1 <= number <= MAX_Z:
            raise ValueError(f"unknown element {site.species_string!r}")
        z.append(number)
    if name is None:
        name = str(obj.properties.get("name", "")) if hasattr(obj, "properties") else ""
    if isinstance(obj, Structure):
        return make_crystal(z, obj.frac_coords, obj.lattice.matrix, name=name)
    return make_molecule(z, obj.cart_coords, name=name)
