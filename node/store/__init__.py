"""The node's state: the database (tables, job/study/send states), the one DICOM header parser, study summaries and
the read queries every stage uses; the job queue's transitions. Imports nothing else of the node but config."""
