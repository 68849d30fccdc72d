"""Reading a spec's YAML: PyYAML's safe loader, refusing a key written twice in one mapping."""

from __future__ import annotations

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping: PyYAML keeps the last
    value silently, so a reviewer reading the first one would be misled about what runs."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(
                    f"`{key}` is written twice in one mapping (lines {seen[key].line + 1} and "
                    f"{key_node.start_mark.line + 1}); keep the one you mean"
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)
