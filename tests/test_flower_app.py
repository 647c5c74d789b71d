"""``flwr run .`` reads fedrec's app from pyproject.toml: its components must be the real
ServerApp and ClientApp, and its run config must be ``FederationSettings()``'s, key for key
and type for type, so the two never drift apart. (A real ``flwr run .`` is in
tests/test_deployment.py.)"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.common.config import validate_config
from flwr.serverapp import ServerApp

from fedrec.shared.federated.settings import FederationSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package (a dependency of flwr)
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as handle:
        return tomllib.load(handle)


def _app() -> dict[str, Any]:
    app = _pyproject().get("tool", {}).get("flwr", {}).get("app")
    assert isinstance(app, dict), f"{PYPROJECT} has no [tool.flwr.app] table"
    return app


def _load(reference: str) -> object:
    module, _, attribute = reference.partition(":")
    assert module and attribute, f"component {reference!r} is not 'module:attribute'"
    return getattr(import_module(module), attribute)


def test_run_config_is_the_default_settings_key_for_key_and_type_for_type() -> None:
    config = _app().get("config", {})
    expected = FederationSettings().to_run_config()
    missing = "<missing>"
    differ = {
        key: (config.get(key, missing), expected.get(key, missing))
        for key in sorted(set(config) | set(expected))
        if type(config.get(key, missing)) is not type(expected.get(key, missing))
        or config.get(key, missing) != expected.get(key, missing)
    }
    assert not differ, (
        "[tool.flwr.app.config] in pyproject.toml differs from "
        f"FederationSettings().to_run_config() as {{key: (pyproject, settings)}}: {differ}"
    )
    assert FederationSettings.from_run_config(config) == FederationSettings(), (
        "FederationSettings.from_run_config([tool.flwr.app.config]) is not the default settings"
    )


def test_components_are_fedrecs_server_and_client_apps() -> None:
    app = _app()
    assert app.get("publisher") == "fedrec", f"publisher is {app.get('publisher')!r}"
    components = app.get("components", {})
    assert components == {
        "serverapp": "fedrec.server.app:app",
        "clientapp": "fedrec.client.app:app",
    }, f"[tool.flwr.app.components] is {components}"
    server = _load(components["serverapp"])
    client = _load(components["clientapp"])
    assert isinstance(server, ServerApp), f"serverapp is a {type(server).__name__}"
    assert isinstance(client, ClientApp), f"clientapp is a {type(client).__name__}"


def test_flower_accepts_the_app_without_errors_or_warnings() -> None:
    # The check `flwr run .` makes before it builds the app bundle, imports included.
    valid, errors, warnings = validate_config(
        _pyproject(), check_module=True, project_dir=PYPROJECT.parent
    )
    assert valid and not errors, f"Flower rejects pyproject.toml: {errors}"
    assert not warnings, f"Flower warns about pyproject.toml: {warnings}"
