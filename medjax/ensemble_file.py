"""`ensemble.json`: what makes a workdir an ensemble's (`--mode=ensemble`, or `--mode=train` with
`trainer.ensemble_size` > 1), in place of checkpoints/: its member workdirs, each stored
relative to the ensemble's workdir, so that an ensemble moved with its members (those of
`trainer.ensemble_size` are inside it, in members/) reads from any folder."""

import json
import os

from medjax.errors import ConfigError

FILE = "ensemble.json"


def text(workdir: str, members: list[str]) -> str:
    """The content of `workdir`'s ensemble.json for the member workdirs `members` (as given:
    relative to the current folder, or absolute)."""
    here = os.path.abspath(workdir)
    relative = [os.path.relpath(os.path.abspath(member), here) for member in members]
    return json.dumps({"members": relative}, indent=2) + "\n"


def members(workdir: str) -> list[str] | None:
    """The member workdirs of the ensemble in `workdir`, resolved against it (relative to the
    current folder where `workdir` is); None where `workdir` holds no ensemble. ConfigError
    where ensemble.json cannot be read, or a member is not where it says."""
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            stored = json.load(f)["members"]
        if not (isinstance(stored, list) and all(isinstance(m, str) for m in stored)):
            raise TypeError("'members' is not a list of paths")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{path} cannot be read ({type(e).__name__}: {e}); run the --mode=ensemble (or "
            "trainer.ensemble_size) command that wrote it again"
        ) from None
    found = [os.path.normpath(os.path.join(workdir, member)) for member in stored]
    for member, resolved in zip(stored, found):
        if not os.path.isdir(resolved):
            raise ConfigError(
                f"{path} names the member {member!r}, which is not at {resolved}: members are "
                "stored relative to the ensemble's workdir; move them with it, or run "
                "--mode=ensemble again with --members where they are now"
            )
    return found


def refuse(workdir: str, why: str, flag: str) -> None:
    """Refuses the ensemble in `workdir`, where only a single model will do (`why`), naming
    its first member to give in its place as `flag`; nothing where `workdir` holds none."""
    found = members(workdir)
    if found:
        raise ConfigError(
            f"{workdir} holds an ensemble ({FILE}): {why}; name one of its members, e.g. "
            f"{flag}={found[0]}"
        )
