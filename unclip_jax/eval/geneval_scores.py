"""GenEval-style scores of per-cell detections: pure numpy functions, one bool per image.

Detections are `SceneDetector.predict` output for N images: {'object': bool [N, 9],
'object_prob': float [N, 9], 'colour'|'shape'|'size': int [N, 9]} (class ids in
`scene_detector.HEADS` order; cell c = 3·row + col). An intended object is {'colour',
'shape', 'size': class id, 'cell': cell index}.

Single-object prompts: the image's object is its most confident detected cell; colour, shape,
size and position are right when that object's are (all wrong when nothing is detected), and
the count is right when exactly one cell holds an object. Two-object prompts (GenEval's
'two objects' / 'colour attribution' / 'position'): count = exactly two objects; binding = two
different cells hold the first object's colour on its shape and the second's; relative
position = such a pair of cells also stands in the prompt's relation.
"""
from __future__ import annotations

import numpy as np

# relation of object A to object B → test on (row, col) of A and B
_RELATION_TESTS = {
    "left of": lambda ra, ca, rb, cb: ca < cb, "right of": lambda ra, ca, rb, cb: ca > cb,
    "above": lambda ra, ca, rb, cb: ra < rb, "below": lambda ra, ca, rb, cb: ra > rb,
}


def object_count(pred: dict) -> np.ndarray:
    """Number of cells holding an object: int [N]."""
    return np.asarray(pred["object"], bool).sum(axis=1)


def main_object(pred: dict) -> np.ndarray:
    """Cell of the most confident detected object per image, −1 where none: int [N]."""
    has = np.asarray(pred["object"], bool)
    prob = np.where(has, np.asarray(pred["object_prob"], np.float64), -np.inf)
    return np.where(has.any(axis=1), prob.argmax(axis=1), -1)


def single_object_scores(pred: dict, intended: list[dict]) -> dict[str, np.ndarray]:
    """pred for N images, intended: N intended objects → {'colour', 'shape', 'size',
    'position', 'count': bool [N]}."""
    cell = main_object(pred)
    found = cell >= 0
    rows = np.arange(len(cell))
    safe = np.maximum(cell, 0)
    out = {k: found & (np.asarray(pred[k])[rows, safe] == np.array([o[k] for o in intended]))
           for k in ("colour", "shape", "size")}
    out["position"] = found & (cell == np.array([o["cell"] for o in intended]))
    out["count"] = object_count(pred) == 1
    return out


def relation_holds(cell_a: int, cell_b: int, relation: str) -> bool:
    """Does the object in cell_a stand `relation` ('left of', 'right of', 'above', 'below')
    to the object in cell_b?"""
    if relation not in _RELATION_TESTS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(_RELATION_TESTS)}")
    return bool(_RELATION_TESTS[relation](*divmod(int(cell_a), 3), *divmod(int(cell_b), 3)))


def _cells_matching(pred: dict, i: int, obj: dict) -> list[int]:
    """Cells of image i that hold an object with obj's colour and shape."""
    has = np.asarray(pred["object"], bool)[i]
    return [c for c in range(has.shape[0]) if has[c] and pred["colour"][i][c] == obj["colour"]
            and pred["shape"][i][c] == obj["shape"]]


def two_object_scores(pred: dict, intended: list[tuple[dict, dict]],
                      relations: list[str]) -> dict[str, np.ndarray]:
    """pred for N images, intended: N pairs (object A, object B), relations: N relations of A
    to B → {'count', 'binding', 'relative_position': bool [N]}."""
    binding, relative = [], []
    for i, ((a, b), rel) in enumerate(zip(intended, relations)):
        pairs = [(ca, cb) for ca in _cells_matching(pred, i, a)
                 for cb in _cells_matching(pred, i, b) if ca != cb]
        binding.append(bool(pairs))
        relative.append(any(relation_holds(ca, cb, rel) for ca, cb in pairs))
    return {"count": object_count(pred) == 2, "binding": np.array(binding, bool),
            "relative_position": np.array(relative, bool)}
