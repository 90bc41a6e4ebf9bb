"""An in-memory pipeline catalogue: the PipelineCatalog port without files, for application and plugin tests."""

from __future__ import annotations

from domain import PipelineDefinition


class DictCatalog:
    def __init__(self, *definitions: PipelineDefinition) -> None:
        self._definitions = {definition.id: definition for definition in definitions}

    def get(self, pipeline_id: str) -> PipelineDefinition:
        return self._definitions[pipeline_id]

    def ids(self) -> list[str]:
        return sorted(self._definitions)

    def source(self, pipeline_id: str) -> str:
        return f"<in-memory pipeline {pipeline_id!r}>"
