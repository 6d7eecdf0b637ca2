"""Result-object builders (in memory; pydicom Datasets) and an atomic saver.

write_dsr (Deformable Spatial Registration), write_rigid_reg (Spatial Registration, prior -> current matrix),
write_registered_series / write_subtraction_series (CT Image Storage on the current grid), save_objects.
"""
from .common import MANUFACTURER, Equipment
from .dsr import DSR_SOP_CLASS, dsr_vectors, grid_geometry, write_dsr
from .registered_series import registered_description, write_registered_series, write_subtraction_series
from .rigid_reg import REG_SOP_CLASS, prior_to_current_matrix, reg_matrix, write_rigid_reg
from .save import save_objects

__all__ = [
    "Equipment", "MANUFACTURER", "write_dsr", "write_rigid_reg", "write_registered_series",
    "write_subtraction_series", "save_objects", "grid_geometry", "dsr_vectors", "reg_matrix",
    "prior_to_current_matrix", "registered_description", "DSR_SOP_CLASS", "REG_SOP_CLASS",
]
