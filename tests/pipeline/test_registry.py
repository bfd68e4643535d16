"""Adding a stage is one module and one registry line: its config section joins the run's config, its
name joins the CLI, status and the dry run. Run in a child process, since the run's config class is
assembled once, when pipeline.config is first imported."""

import subprocess
import sys
import textwrap

STAGE_MODULE = '''
from dataclasses import dataclass

from core.config import param
from core.errors import ConfigError
from core.stage import Stage, Step


@dataclass(kw_only=True)
class ShoutConfig:
    times: int = param(2, ge=1, help="how many times")

    def __post_init__(self):
        if self.times == 13:
            raise ConfigError("shout.times=13 is unlucky; pick another")


def run(ctx):
    (ctx.out_dir / "out.txt").write_text("hey" * ctx.cfg.shout.times)


STAGE = Stage(name="shout", needs=("clean",), sections=("shout",), steps=(Step("run", run),),
              description="says hey", config={"shout": ShoutConfig})
'''

CHILD = '''
import sys
from pipeline import registry
registry.STAGE_MODULES["shout"] = "shout_stage"   # the one registry line
from pipeline.config import RunConfig, load_config
from pipeline.cli import main
from core.errors import ConfigError
cfg = load_config(None, ["shout.times=3"])
print("times", cfg.shout.times, list(RunConfig.__dataclass_fields__)[-3:])
for bad in ("shout.times=0", "shout.times=13", "shout.loud=1"):
    try:
        load_config(None, [bad])
    except ConfigError as exc:
        print("refused", exc)
main(["run", "--help"])
'''


def test_a_new_stage_is_one_module_and_one_registry_line(tmp_path):
    (tmp_path / "shout_stage.py").write_text(textwrap.dedent(STAGE_MODULE))
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    text = out.stdout + out.stderr
    assert "times 3 ['evaluate', 'shout', 'cluster']" in text, text
    assert "refused shout.times=0 is out of range; expected >= 1" in text
    assert "refused shout.times=13 is unlucky" in text
    assert "refused unknown key 'shout.loud'; valid keys at shout: times" in text
    assert "shout       says hey" in text  # `graine run --help` lists the stage with its description
