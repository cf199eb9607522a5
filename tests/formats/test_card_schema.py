"""The one model-card schema (protected_nn/model_card.py) as protect, the gateway and the backend
use it: unknown keys refused and named, everywhere; cards written before it still load."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from backend_decryptor.catalog import StoreCatalog
from backend_decryptor.commands.card_file import load_card
from backend_decryptor.store import Store
from edge_agent.bundle_watch import load_bundle
from edge_agent.preprocess import InputSpec, InputSpecError
from protected_nn import api, bundle
from protected_nn.errors import ProtectedNNError
from protected_nn.model_card import CardError, ModelCard, parse_card
from tests.support.tiny_models import frame_model

OUTPUTS = [{"name": "crowd_count", "index": 0, "kind": "count", "max": 50},
           {"name": "incident", "index": 1, "kind": "logit"}]

# Cards exactly as the code before the schema wrote them into bundles and stores (copied from
# stores made by protect, the demo and scripts/local-example.sh; the adapt record is abridged).
SHIPPED_MODEL_CARD = (
    '{"input_shape": [1, 2, 32, 32], "output_shape": [1, 2], "arch": {"size": [32, 32], "convs": '
    '[[8, 5, 2, 2]], "hidden": 28, "gray": [6]}, "input": {"shape": [1, 2, 32, 32], "channels": '
    '"gray+motion", "scale": 0.00392156862745098, "mean": 0, "std": 1, "resize": "area"}, "description": '
    '"Crowd-and-incident CNN for fhe-edge.", "motion": {"order": "resize_then_absdiff", '
    '"frame_interval_s": 0.1, "trained_gaps_frames": [1, 2], "first_frame": "zeros", "count_uses_motion": '
    'false}, "outputs": [{"name": "crowd_count", "index": 0, "kind": "count"}, {"name": "incident", '
    '"index": 1, "kind": "logit"}], "calibrated_input_range": [0.0, 1.0]}')
OLD_CARDS = {
    "shipped model": SHIPPED_MODEL_CARD,
    "tiny model": '{"input_shape": [1, 2, 8, 8], "output_shape": [1, 2], "input": {"shape": [1, 2, 8, 8], '
                  '"channels": "gray+motion", "scale": 0.00392156862745098}, "calibrated_input_range": [0, 1], '
                  '"outputs": [{"name": "crowd_count", "index": 0, "kind": "count"}]}',
    "adapted, with labels": '{"input_shape": [1, 1, 8, 8], "output_shape": [1, 3], "description": "a test CNN", '
                            '"adapt": {"activations": [{"node": "relu1", "form": "poly"}], "degree": 2}, '
                            '"outputs": [{"name": "density", "index": 0, "kind": "class_scores", "size": 3, '
                            '"min": -5, "max": 5}], "labels": {"density": ["sparse", "busy", "packed"]}}',
    "no card": "",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, a really protected tiny model) - protected once for the module."""
    folder = tmp_path_factory.mktemp("tiny")
    return folder, api.protect(frame_model(folder / "tiny.onnx"))


def _onnx_with(tmp_path, props: dict[str, str]):
    path = frame_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _bundle_with_card(folder, prot, card: bytes):
    key = bundle.generate_owner_key()
    artifacts = dataclasses.replace(prot.artifacts, model_card=card)
    path = folder / f"card-{abs(hash(card))}.bundle"
    bundle.write_bundle(path, "tiny", artifacts, key)
    return path, key.public_key()


def test_a_misspelt_bound_in_the_onnx_metadata_is_refused_by_protect(tmp_path):
    typo = [{**OUTPUTS[0], "maxx": 50}]
    path = _onnx_with(tmp_path, {"fhe_edge.outputs": json.dumps(typo)})
    with pytest.raises(CardError, match=r"outputs\.0\.maxx: unknown setting 'maxx' - did you mean 'max'\?"):
        api.protect(path)


def test_a_misspelt_bound_in_the_card_given_to_protect_is_refused(tmp_path):
    options = api.ProtectOptions(model_card={"outputs": [{**OUTPUTS[0], "maxx": 50}]})
    with pytest.raises(CardError, match="did you mean 'max'"):
        api.protect(frame_model(tmp_path / "m.onnx"), options=options)


def test_a_misspelt_metadata_key_is_refused(tmp_path):
    path = _onnx_with(tmp_path, {"fhe_edge.outptus": json.dumps(OUTPUTS)})
    with pytest.raises(CardError, match=r"fhe_edge\.outptus: not a model card field - did you mean 'fhe_edge.outputs'"):
        api.protect(path)


def test_a_misspelt_top_level_key_in_a_card_yaml_names_its_line(tmp_path):
    card = tmp_path / "m.card.yaml"
    card.write_text("outputs:\n  - {name: density, index: 0, kind: class_scores, size: 3}\n"
                    "lables:\n  density: [sparse, busy, packed]\n")
    with pytest.raises(ValueError, match=r"m\.card\.yaml:3: lables: unknown setting 'lables' - did you mean 'labels'\?"):
        load_card(card)


@pytest.mark.parametrize("card,message", [
    ({"output_shape": [1, 2], "outputs": [{"name": "c", "index": 2, "kind": "count"}]},
     "outputs.0.index: output c needs 3 values, the model has 2"),
    ({"outputs": OUTPUTS + [{"name": "incident", "index": 0, "kind": "logit"}]}, "'incident' is listed twice"),
    ({"outputs": OUTPUTS, "labels": {"incidnet": ["calm", "incident"]}}, "no output is named 'incidnet' - did you mean 'incident'"),
    ({"input_shape": [1, 2, 8, 8], "input": {"shape": [1, 2, 16, 16]}}, "is not the model's input shape"),
    ({"input": {"shape": [1, 2, 8, 8], "chanels": "gray+motion"}}, "input.chanels: unknown setting 'chanels' - did you mean 'channels'"),
    ({"input_shape": [1, 3, 8, 8], "input": {"channels": "gray"}}, "input.channels: channels 'gray' do not fit 3"),
    ({"input_shape": [1, 2, 8, 8], "input": {"mean": [0, 0, 0]}}, "input.mean: [0.0, 0.0, 0.0]: expected a number or 2"),
    ({"input_shape": [1, 784], "input": {"scale": 1}}, "is not a frame [1, C, H, W]"),
    ({"motion": {"frame_interval_s": 0}}, "motion.frame_interval_s"),
    ({"input": {"resize": "nearest"}}, "input.resize"),
])
def test_cards_that_do_not_fit_are_refused_naming_the_field(card, message):
    with pytest.raises(CardError) as exc:
        parse_card("m", card)
    assert message in str(exc.value)


def test_the_gateway_refuses_a_bundle_whose_card_does_not_fit(tiny):
    folder, prot = tiny
    card = json.loads(prot.artifacts.model_card)
    card["input"]["chanels"] = "gray"             # before: ignored, the default channels were used
    path, owner = _bundle_with_card(folder, prot, json.dumps(card).encode())
    with pytest.raises(ProtectedNNError, match="input.chanels: unknown setting"):
        load_bundle(path, owner)
    with pytest.raises(InputSpecError, match="did you mean 'channels'"):
        InputSpec.from_card(card)


def test_protect_writes_a_card_every_side_reads(tiny):
    _, prot = tiny
    card = prot.artifacts.card()
    assert card.input_shape == [1, 2, 8, 8] and card.output_shape == [1, 2]
    assert card.calibrated_input_range == (0.0, 1.0) and card.input.channels == "gray+motion"
    written = json.loads(prot.artifacts.model_card)
    assert "resize" not in written["input"]       # defaults are not written: only what was given
    assert InputSpec.from_card(card).shape == (1, 2, 8, 8)


@pytest.mark.parametrize("name", list(OLD_CARDS))
def test_bundles_and_stores_written_before_the_schema_still_load(tiny, tmp_path, name):
    folder, prot = tiny
    old = OLD_CARDS[name].encode()
    path, owner = _bundle_with_card(folder, prot, old)
    model, _ = load_bundle(path, owner)                       # the gateway
    card = model.artifacts.card()
    assert isinstance(card, ModelCard)
    if old:
        assert json.loads(card.to_json()) == json.loads(old)  # read and written back unchanged
    if name == "shipped model":
        spec = InputSpec.from_card(card)
        assert (spec.channels, spec.height, spec.motion_interval_s) == ("gray+motion", 32, 0.1)
    store = Store(tmp_path / "store")                          # the backend
    store.add_model("m", dataclasses.replace(prot, artifacts=model.artifacts), "0" * 64)
    if not old:
        with pytest.raises(CardError, match="model m: model card outputs: none listed"):
            StoreCatalog(tmp_path / "store").card("m")
        return
    stored = StoreCatalog(tmp_path / "store").card("m")
    assert [o.name for o in stored.outputs] == [o.name for o in card.outputs]
    assert stored.output(stored.outputs[0].name).bounds() == card.outputs[0].bounds()


def test_a_gateway_worker_that_only_infers_does_not_load_the_schema(tiny, tmp_path):
    """The card is parsed where it is read (bundle check, preprocessing), not in every worker:
    pydantic would cost each worker process about 8 MB."""
    folder, prot = tiny
    path, owner = _bundle_with_card(folder, prot, prot.artifacts.model_card)
    bundle.save_public_key(owner, tmp_path / "owner.pub")
    code = (f"import sys, numpy as np\n"
            f"from edge_agent.pool import _load_class, DEFAULT_MODEL_CLASS\n"
            f"from protected_nn.bundle import read_bundle, load_owner_public_key\n"
            f"_, artifacts = read_bundle({str(path)!r}, load_owner_public_key({str(tmp_path / 'owner.pub')!r}))\n"
            f"model = _load_class(DEFAULT_MODEL_CLASS)(artifacts)\n"
            f"model.infer(np.zeros((1, 2, 8, 8), np.float32))\n"
            f"print('pydantic' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(api.__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
