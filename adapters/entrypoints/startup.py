"""Which failures at start-up are the operator's configuration, and the one line that says so.

The CLI and every server worker process (`serve --workers N`) use this, so a
bad pipeline file or an unusable model stops start-up the same way everywhere:
one line naming the fault on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

from adapters.container import PluginLoadError
from adapters.observability.otlp_export import ExportConfigError
from adapters.observability.tracing import TracingConfigError
from adapters.pipelines.catalog import PipelineLoadError
from adapters.plugins.yolo import ModelLoadError
from adapters.settings import SettingsError
from domain import PipelineValidationError

CONFIGURATION_EXIT_STATUS = 2

CONFIGURATION_ERRORS: tuple[type[Exception], ...] = (
    SettingsError,
    PipelineLoadError,
    PipelineValidationError,
    PluginLoadError,
    ModelLoadError,
    TracingConfigError,
    ExportConfigError,
)


def configuration_error_line(error: Exception) -> str:
    """The stderr line for one of CONFIGURATION_ERRORS."""
    if isinstance(error, SettingsError):
        kind = "configuration error"
    elif isinstance(error, ModelLoadError):
        kind = "model configuration error"
    else:
        kind = "pipeline configuration error"
    return f"forgesyte-stream: {kind}: {error}"
