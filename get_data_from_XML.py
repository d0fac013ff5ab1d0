"""Original import path: ``from get_data_from_XML import XML_preprocessor``."""

from ssd300.voc import XML_preprocessor  # noqa: F401
