"""`backend-decryptor check-config`: everything `run` will need, checked before it is needed.

Errors (exit 2) are what `run` would fail on, or what would make alerts silently never fire: an
unreadable file (each named with its setting and path), no store, a state_db folder that cannot be
made (a regular file in the way), the metrics address taken, a model in the
store without a valid output card, a rule reading an output no stored model has. Every model of
the store is reported, not only the first bad one. Warnings (exit 0) are values that work but are
probably wrong.
"""
from __future__ import annotations

import os

from backend_decryptor.config import BackendConfig
from backend_decryptor.rules_config import AlertRules
from service_common.yaml_loader import line_of
from service_common.preflight import address_free, is_loopback, not_a_folder, readable

# The only remedy that exists: `models retire` refuses the active key version, and protecting
# again makes a new active one (whose card then counts).
CARD_FIX = ("protect it again with a card (a new key version, which becomes the active one): "
            "backend-decryptor protect MODEL.onnx --model-id {id} --card CARD.yaml "
            "(docs/backend.md, 'Model card')")


def store_error(cfg: BackendConfig) -> str | None:
    """`run` refuses to start without the store: an error, with the command that makes it."""
    if cfg.store.is_dir():
        return None
    what = "is not a folder" if cfg.store.exists() else "does not exist"
    return (f"store {cfg.store}: {what}: protect a model into it first: backend-decryptor protect "
            f"MODEL.onnx --model-id ID --store {cfg.store}")


def state_db_error(cfg: BackendConfig) -> str | None:
    """The SQLite file's folder must be a folder or makeable (`run` makes it)."""
    if cfg.database.is_postgres:
        return None
    path, field = cfg.sqlite_path(), "database.url" if cfg.database.url else "state_db"
    if path.is_dir():
        return f"{field} {path}: is a folder, not the SQLite file"
    return not_a_folder(field, path, path.parent)


def file_errors(cfg: BackendConfig) -> list[str]:
    """Files and folders `run` opens at start (also checked by `run` itself before it connects)."""
    errors = [p for p in (store_error(cfg), state_db_error(cfg)) if p]
    tls = cfg.mqtt.tls
    if tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            if (problem := readable(f"mqtt.tls.{name}", getattr(tls, name))):
                errors.append(problem)
    if cfg.mqtt.password_file and not _needs_systemd(cfg.mqtt.password_file):
        try:
            cfg.mqtt.password()
        except ValueError as exc:
            errors.append(str(exc))
    return errors


def _needs_systemd(password_file: str) -> bool:
    return "CREDENTIALS_DIRECTORY" in password_file and not os.environ.get("CREDENTIALS_DIRECTORY")


def check(cfg: BackendConfig, rules: AlertRules) -> tuple[list[str], list[str], list[str]]:
    """(errors, warnings, one line per stored model)."""
    errors = file_errors(cfg)
    warnings = []
    if cfg.mqtt.password_file and _needs_systemd(cfg.mqtt.password_file):
        warnings.append(f"mqtt.password_file {cfg.mqtt.password_file}: checked only under systemd "
                        "($CREDENTIALS_DIRECTORY unset)")
    if cfg.metrics.listen and (problem := address_free("metrics.listen", cfg.metrics.listen)):
        errors.append(problem)
    if cfg.mqtt.tls is None and not is_loopback(cfg.mqtt.host):
        warnings.append(f"mqtt: no tls: section for broker {cfg.mqtt.host}: the password and alerts "
                        "cross the network in clear (add tls: {ca_file: ...})")
    models: list[str] = []
    if store_error(cfg):                # already an error (file_errors)
        return errors, warnings, models
    try:
        outputs = _check_store(cfg, rules, errors, models)
    except (OSError, ValueError) as exc:
        errors.append(f"store {cfg.store}: {exc}")
        return errors, warnings, models
    if outputs:          # at least one usable model: a rule reading an output none has never fires
        for name, rule in (("crowd", rules.crowd), ("incident", rules.incident)):
            if rule.enabled and rule.output not in outputs:
                line = line_of(cfg.alerts.rules_file, (name, "output"))
                errors.append(f"{cfg.alerts.rules_file}:{line}: {name}.output: no stored model has an "
                              f"output {rule.output!r} (outputs: {', '.join(sorted(outputs))})")
    return errors, warnings, models


def _check_store(cfg: BackendConfig, rules: AlertRules, errors: list[str], models: list[str]) -> set[str]:
    from protected_nn.model_card import CardError, parse_card
    from backend_decryptor.store import Store
    store = Store(cfg.store, create=False)
    outputs: set[str] = set()
    for model_id in store.model_ids():
        try:
            card = parse_card(model_id, store.model_card(model_id), need_outputs=True)
        except CardError as exc:
            errors.append(f"{exc}: {CARD_FIX.format(id=model_id)}")
            models.append(f"model {model_id}: NO VALID CARD (see the error)")
            continue
        names = [o.name for o in card.outputs]
        outputs.update(names)
        missing = [o for o in (rules.crowd.output, rules.incident.output) if o not in names]
        note = f" (no {', '.join(missing)}: that rule is skipped for it)" if missing else ""
        models.append(f"model {model_id}: outputs {', '.join(names)}{note}")
    return outputs
