"""Stand-ins made of random bytes for the tests of what only stores, signs and ships artifacts
(bundles, the owner store, catalogs): nothing here can be decrypted or evaluated. `fake_artifacts`
carries a real plan (one `protect` wrote, tests/formats/plans/), since a gateway reads the plan
when it loads a bundle."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from types import SimpleNamespace

from protected_nn.artifacts import MEMBERS, ModelArtifacts

REAL_PLAN = gzip.decompress((Path(__file__).parents[1] / "formats" / "plans" /
                             "main-7e2162f-frame-model.json.gz").read_bytes())


def fake_artifacts(seed=0) -> ModelArtifacts:
    rng = random.Random(seed)
    members = {m: rng.randbytes(rng.randint(50, 400)) for m in MEMBERS}
    members["plan"] = REAL_PLAN
    members["model_card"] = json.dumps({"outputs": [{"name": "a", "index": 0, "kind": "count"}]}).encode()
    return ModelArtifacts(**members)


def fake_protected(seed: int):
    """Shaped like api.Protected (the store only reads these attributes), made of random bytes."""
    return SimpleNamespace(artifacts=fake_artifacts(seed), secret_key=b"SECRET-%d" % seed,
                           report={"layers": [seed]}, report_text="report")


CROWD_CARD = {"outputs": [{"name": "crowd_count", "index": 0, "kind": "count"},
                          {"name": "incident", "index": 1, "kind": "logit"}]}


def stored(seed: int, card: dict | None):
    """What `protect` hands the store, with random bytes for the CKKS parts (never evaluated here)."""
    rng = random.Random(seed)
    members = {m: rng.randbytes(64) for m in MEMBERS}
    members["model_card"] = json.dumps(card).encode() if card is not None else b""
    return SimpleNamespace(artifacts=ModelArtifacts(**members), secret_key=b"S%d" % seed, report={})
