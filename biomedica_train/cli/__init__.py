"""The commands of biomedica-train: ``biomedica train`` (:mod:`biomedica_train.cli.train`) and
``biomedica evaluate`` (:mod:`biomedica_train.cli.evaluate`).

They join the ``biomedica`` command line through the ``biomedica.commands`` entry points in
pyproject.toml (:mod:`biomedica_kit.cli.plugins`), so the library's CLI never imports this
package. Each module imports torch and open_clip inside its command only: every ``biomedica``
start loads the modules.
"""

__all__: list[str] = []
