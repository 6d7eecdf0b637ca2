"""Keywords of the Patient and Study information entities (top-level attributes of the Patient, Clinical Trial
Subject, General Study, Patient Study and Clinical Trial Study modules, PS3.3; taken from highdicom's tables).

Result objects copy every one of these that the current series has, so that all objects of a study agree
(dcentvfy checks this).
"""

PATIENT_KEYWORDS = (
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar", "PatientAlternativeCalendar",
    "PatientSex", "QualityControlSubject", "StrainDescription", "StrainNomenclature", "StrainStockSequence",
    "StrainAdditionalInformation", "StrainCodeSequence", "GeneticModificationsSequence", "OtherPatientNames",
    "OtherPatientIDsSequence", "ReferencedPatientPhotoSequence", "EthnicGroupCodeSequence",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization",
    "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID",
    "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
    "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "EthnicGroup",
)

STUDY_KEYWORDS = (
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyDescription", "ProcedureCodeSequence", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence", "StudyInstanceUID", "StudyID",
    "RequestingService", "RequestingServiceCodeSequence", "ReasonForPerformedProcedureCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension", "MeasuredLateralDimension",
    "PatientWeight", "MedicalAlerts", "Allergies", "Occupation", "SmokingStatus", "AdditionalPatientHistory",
    "PregnancyStatus", "LastMenstrualDate", "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence",
    "AdmissionID", "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState", "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription", "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)
