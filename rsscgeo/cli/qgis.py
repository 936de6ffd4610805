"""``rsscgeo qgis``: put the QGIS plugin (the Processing provider) where QGIS finds it."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from configparser import ConfigParser
from pathlib import Path

import click

from rsscgeo.qgis_plugin import PLUGIN_DIR, PLUGIN_NAME

# Files of the plugin folder that are never shipped.
_SKIPPED = ("__pycache__", ".pyc")


def qgis_profiles_dir() -> Path:
    """Where QGIS 3 keeps its user profiles on this system."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "QGIS" / "QGIS3" / "profiles"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "QGIS" / "QGIS3" / "profiles"
    data = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return data / "QGIS" / "QGIS3" / "profiles"


def _plugin_files() -> list[Path]:
    return sorted(
        p for p in PLUGIN_DIR.rglob("*") if p.is_file() and not any(s in str(p) for s in _SKIPPED)
    )


@click.group()
def qgis() -> None:
    """Install or package the QGIS plugin (rsscgeo's algorithms in the Processing Toolbox)."""


@qgis.command()
@click.option("--profile", default="default", show_default=True, help="QGIS user profile.")
@click.option(
    "--profiles-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="QGIS's profiles folder [default: this system's, ~/.local/share/QGIS/QGIS3/profiles].",
)
@click.option(
    "--link/--copy",
    default=False,
    show_default=True,
    help="Link the plugin folder (follows this checkout) instead of copying it.",
)
def install(profile: str, profiles_dir: Path | None, link: bool) -> None:
    """Install the plugin into a QGIS profile, enable it, and point it at this rsscgeo.

    The plugin runs this environment's rsscgeo executable (its path is written into the
    profile's Processing settings); restart QGIS afterwards.
    """
    from rsscgeo.errors import OutputError

    root = (profiles_dir or qgis_profiles_dir()) / profile
    plugins = root / "python" / "plugins"
    target = plugins / PLUGIN_NAME
    try:
        plugins.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        if link:
            target.symlink_to(PLUGIN_DIR, target_is_directory=True)
        else:
            shutil.copytree(PLUGIN_DIR, target, ignore=shutil.ignore_patterns(*_SKIPPED))
        _enable(root / "QGIS" / "QGIS3.ini", _executable())
    except OSError as err:
        raise OutputError(
            f"cannot install the plugin into {plugins} ({err.strerror or err})",
            cli_fix="check the folder's permissions, or pass --profiles-dir.",
        ) from None
    click.echo(f"installed the rsscgeo plugin in {target} ({'linked' if link else 'copied'})")
    click.echo("restart QGIS: the algorithms are under Processing Toolbox > rsscgeo")


def _executable() -> str:
    """This environment's rsscgeo executable (the one running now)."""
    beside = Path(sys.executable).with_name("rsscgeo")
    return str(beside if beside.exists() else shutil.which("rsscgeo") or "rsscgeo")


def _enable(ini: Path, executable: str) -> None:
    """Enable the plugin and set its executable in the profile's QGIS3.ini."""
    config = ConfigParser(interpolation=None, strict=False)
    config.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    if ini.exists():
        config.read(ini)
    for section, key, value in (
        ("PythonPlugins", PLUGIN_NAME, "true"),
        ("Processing", "Configuration\\RSSCGEO_EXECUTABLE", executable),
    ):
        if not config.has_section(section):
            config.add_section(section)
        config.set(section, key, value)
    ini.parent.mkdir(parents=True, exist_ok=True)
    with ini.open("w") as f:
        config.write(f, space_around_delimiters=False)


@qgis.command()
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing zip.")
def package(out: Path, overwrite: bool) -> None:
    """Build OUT.zip for QGIS's plugin manager (Plugins > Install from ZIP)."""
    from rsscgeo.errors import OptionError, OutputExistsError
    from rsscgeo.outputs import check_output_folder

    if out.suffix.lower() != ".zip":
        raise OptionError(f"{out} must end in .zip (QGIS installs plugins from zip files).")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists", cli_fix="pass --overwrite to replace it.")
    check_output_folder(out.parent, "OUT", create=False)
    tmp = out.with_name(f".{out.name}.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in _plugin_files():
            archive.write(path, Path(PLUGIN_NAME) / path.relative_to(PLUGIN_DIR))
    tmp.replace(out)
    click.echo(f"wrote {out} (install it in QGIS: Plugins > Manage and Install > Install from ZIP)")
