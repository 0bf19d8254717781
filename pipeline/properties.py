"""RDKit's molecular properties for screening and ranking: QED, Crippen logP and the SA score.

- ``qed``: quantitative estimate of drug-likeness in [0, 1] (Bickerton et al., Nat. Chem. 2012;
  ``rdkit.Chem.QED.qed``, the paper's mean weights);
- ``logp``: Wildman-Crippen octanol/water logP (J. Chem. Inf. Comput. Sci. 1999;
  ``rdkit.Chem.Crippen.MolLogP``);
- ``sa``: synthetic accessibility score, 1 (easy) to 10 (hard) (Ertl & Schuffenhauer,
  J. Cheminform. 2009), RDKit's contributed ``sascorer`` that ships in the rdkit wheel under
  ``rdkit/Contrib/SA_Score`` with its fragment scores.

All three are computed on the heavy-atom graph (``Chem.RemoveHs``): the SA score's fragment
fingerprint was fitted on molecules without explicit hydrogens.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

COLUMNS = ("qed", "logp", "sa")


@lru_cache(maxsize=1)
def _sascorer():
    """RDKit's contributed SA scorer (``rdkit/Contrib/SA_Score/sascorer.py``), imported once."""
    from rdkit.Chem import RDConfig

    folder = Path(RDConfig.RDContribDir) / "SA_Score"
    if not (folder / "sascorer.py").exists():
        raise ImportError(f"RDKit's SA scorer is not installed: {folder / 'sascorer.py'} missing")
    sys.path.insert(0, str(folder))
    try:
        import sascorer
    finally:
        sys.path.remove(str(folder))
    return sascorer


def molecule_properties(mol) -> dict[str, float | None]:
    """``{"qed", "logp", "sa"}`` of a sanitised RDKit molecule (all None for ``mol`` None).

    Raises RDKit's errors for a molecule that is not sanitised."""
    if mol is None:
        return dict.fromkeys(COLUMNS)
    from rdkit import Chem
    from rdkit.Chem import QED, Crippen

    heavy = Chem.RemoveHs(mol)
    return {
        "qed": float(QED.qed(heavy)),
        "logp": float(Crippen.MolLogP(heavy)),
        "sa": float(_sascorer().calculateScore(heavy)),
    }


__all__ = ["COLUMNS", "molecule_properties"]
