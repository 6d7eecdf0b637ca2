--
-- PostgreSQL database dump
--

\restrict tUgBA0ByYUZ45otjp0TXNfPVs8zdsvNu8l1f58H7A53qZxcVrvcEjD4BoNDMIKc

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_tokens (
    id integer NOT NULL,
    name character varying(128) NOT NULL,
    token_hash character varying(64) NOT NULL,
    role character varying(16) NOT NULL,
    created_by character varying(64) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    last_used_at timestamp without time zone,
    revoked boolean NOT NULL
);


--
-- Name: api_tokens_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.api_tokens_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: api_tokens_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.api_tokens_id_seq OWNED BY public.api_tokens.id;


--
-- Name: console_sessions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.console_sessions (
    id integer NOT NULL,
    token_hash character varying(64) NOT NULL,
    user_id integer NOT NULL,
    csrf character varying(64) NOT NULL,
    data text NOT NULL,
    created_at timestamp without time zone NOT NULL,
    last_seen_at timestamp without time zone NOT NULL,
    expires_at timestamp without time zone NOT NULL
);


--
-- Name: console_sessions_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.console_sessions_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: console_sessions_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.console_sessions_id_seq OWNED BY public.console_sessions.id;


--
-- Name: console_users; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.console_users (
    id integer NOT NULL,
    username character varying(64) NOT NULL,
    password_hash character varying(255) NOT NULL,
    role character varying(16) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    active boolean NOT NULL
);


--
-- Name: console_users_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.console_users_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: console_users_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.console_users_id_seq OWNED BY public.console_users.id;


--
-- Name: events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.events (
    id integer NOT NULL,
    at timestamp without time zone NOT NULL,
    level character varying(8) NOT NULL,
    kind character varying(32) NOT NULL,
    study_uid character varying(64) NOT NULL,
    job_id integer,
    send_id integer,
    message text NOT NULL
);


--
-- Name: events_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.events_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: events_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.events_id_seq OWNED BY public.events.id;


--
-- Name: instances; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.instances (
    id integer NOT NULL,
    sop_instance_uid character varying(64) NOT NULL,
    sop_class_uid character varying(64) NOT NULL,
    series_uid character varying(64) NOT NULL,
    study_uid character varying(64) NOT NULL,
    instance_number integer,
    path text NOT NULL,
    size_bytes bigint NOT NULL,
    sha256 character varying(64) NOT NULL,
    transfer_syntax character varying(64) NOT NULL,
    calling_ae character varying(16) NOT NULL,
    received_at timestamp without time zone NOT NULL,
    versions integer NOT NULL,
    late boolean NOT NULL
);


--
-- Name: instances_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.instances_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: instances_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.instances_id_seq OWNED BY public.instances.id;


--
-- Name: job_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.job_runs (
    id integer NOT NULL,
    job_id integer NOT NULL,
    worker character varying(128) NOT NULL,
    lease_token character varying(64) NOT NULL,
    attempt integer NOT NULL,
    started_at timestamp without time zone NOT NULL,
    ended_at timestamp without time zone,
    result character varying(16) NOT NULL,
    message text NOT NULL
);


--
-- Name: job_runs_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.job_runs_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: job_runs_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.job_runs_id_seq OWNED BY public.job_runs.id;


--
-- Name: jobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.jobs (
    id integer NOT NULL,
    kind character varying(32) NOT NULL,
    study_uid character varying(64) NOT NULL,
    current_series_uid character varying(64) NOT NULL,
    prior_series_uid character varying(64) NOT NULL,
    prior_study_uid character varying(64) NOT NULL,
    rule_name character varying(128) NOT NULL,
    round integer NOT NULL,
    params json NOT NULL,
    priority integer NOT NULL,
    state character varying(16) NOT NULL,
    outcome character varying(16) NOT NULL,
    outcome_reason text NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    not_before timestamp without time zone NOT NULL,
    lease_owner character varying(128) NOT NULL,
    lease_token character varying(64) NOT NULL,
    lease_expires_at timestamp without time zone,
    created_at timestamp without time zone NOT NULL,
    started_at timestamp without time zone,
    finished_at timestamp without time zone,
    timings json NOT NULL,
    qc json NOT NULL,
    suspicious boolean NOT NULL,
    result_dir text NOT NULL,
    qc_png text NOT NULL
);


--
-- Name: jobs_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.jobs_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: jobs_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.jobs_id_seq OWNED BY public.jobs.id;


--
-- Name: rule_versions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.rule_versions (
    id integer NOT NULL,
    version integer NOT NULL,
    text text NOT NULL,
    author character varying(64) NOT NULL,
    comment character varying(255) NOT NULL,
    created_at timestamp without time zone NOT NULL
);


--
-- Name: rule_versions_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.rule_versions_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: rule_versions_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.rule_versions_id_seq OWNED BY public.rule_versions.id;


--
-- Name: sends; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sends (
    id integer NOT NULL,
    job_id integer NOT NULL,
    destination character varying(128) NOT NULL,
    state character varying(16) NOT NULL,
    attempts integer NOT NULL,
    max_attempts integer NOT NULL,
    not_before timestamp without time zone NOT NULL,
    n_files integer NOT NULL,
    n_acknowledged integer NOT NULL,
    error text NOT NULL,
    lease_owner character varying(128) NOT NULL,
    lease_expires_at timestamp without time zone,
    created_at timestamp without time zone NOT NULL,
    finished_at timestamp without time zone
);


--
-- Name: sends_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.sends_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: sends_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.sends_id_seq OWNED BY public.sends.id;


--
-- Name: series; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.series (
    id integer NOT NULL,
    series_uid character varying(64) NOT NULL,
    study_id integer NOT NULL,
    study_uid character varying(64) NOT NULL,
    modality character varying(16) NOT NULL,
    description character varying(128) NOT NULL,
    number integer,
    image_type character varying(128) NOT NULL,
    sop_class_uid character varying(64) NOT NULL,
    frame_of_reference_uid character varying(64) NOT NULL,
    slice_thickness_mm double precision,
    body_part character varying(64) NOT NULL,
    n_instances integer NOT NULL,
    first_received_at timestamp without time zone NOT NULL,
    last_received_at timestamp without time zone NOT NULL
);


--
-- Name: series_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.series_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: series_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.series_id_seq OWNED BY public.series.id;


--
-- Name: studies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.studies (
    id integer NOT NULL,
    study_uid character varying(64) NOT NULL,
    patient_id character varying(64) NOT NULL,
    issuer character varying(64) NOT NULL,
    patient_name character varying(324) NOT NULL,
    birth_date date,
    sex character varying(16) NOT NULL,
    study_date date,
    study_time character varying(16) NOT NULL,
    description character varying(128) NOT NULL,
    accession_number character varying(64) NOT NULL,
    calling_ae character varying(16) NOT NULL,
    origin character varying(16) NOT NULL,
    n_instances integer NOT NULL,
    size_bytes bigint NOT NULL,
    first_received_at timestamp without time zone NOT NULL,
    last_received_at timestamp without time zone NOT NULL,
    state character varying(16) NOT NULL,
    round_started_at timestamp without time zone NOT NULL,
    routing_round integer NOT NULL,
    routed_at timestamp without time zone,
    late_instances integer NOT NULL,
    follow_up_pending boolean NOT NULL,
    error text NOT NULL
);


--
-- Name: studies_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.studies_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: studies_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.studies_id_seq OWNED BY public.studies.id;


--
-- Name: api_tokens id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_tokens ALTER COLUMN id SET DEFAULT nextval('public.api_tokens_id_seq'::regclass);


--
-- Name: console_sessions id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.console_sessions ALTER COLUMN id SET DEFAULT nextval('public.console_sessions_id_seq'::regclass);


--
-- Name: console_users id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.console_users ALTER COLUMN id SET DEFAULT nextval('public.console_users_id_seq'::regclass);


--
-- Name: events id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events ALTER COLUMN id SET DEFAULT nextval('public.events_id_seq'::regclass);


--
-- Name: instances id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.instances ALTER COLUMN id SET DEFAULT nextval('public.instances_id_seq'::regclass);


--
-- Name: job_runs id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_runs ALTER COLUMN id SET DEFAULT nextval('public.job_runs_id_seq'::regclass);


--
-- Name: jobs id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs ALTER COLUMN id SET DEFAULT nextval('public.jobs_id_seq'::regclass);


--
-- Name: rule_versions id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rule_versions ALTER COLUMN id SET DEFAULT nextval('public.rule_versions_id_seq'::regclass);


--
-- Name: sends id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sends ALTER COLUMN id SET DEFAULT nextval('public.sends_id_seq'::regclass);


--
-- Name: series id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.series ALTER COLUMN id SET DEFAULT nextval('public.series_id_seq'::regclass);


--
-- Name: studies id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.studies ALTER COLUMN id SET DEFAULT nextval('public.studies_id_seq'::regclass);


--
-- Data for Name: api_tokens; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.api_tokens (id, name, token_hash, role, created_by, created_at, last_used_at, revoked) FROM stdin;
1	pacs-bot	16c025aed21f30fab3ecdaf1d1b70c745c21afddc91ca4d3c66ce0f1279b180a	viewer	admin	2026-12-04 15:01:10.195978	\N	f
\.


--
-- Data for Name: console_sessions; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.console_sessions (id, token_hash, user_id, csrf, data, created_at, last_seen_at, expires_at) FROM stdin;
\.


--
-- Data for Name: console_users; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.console_users (id, username, password_hash, role, created_at, active) FROM stdin;
1	admin	scrypt$16384$8$1$Aj+DzIbqc3YqD5A3nhRNJw==$wnG86Yoe3Beu2wYujXWRyBsPnxq/1uSbGapr7F7zEpM=	admin	2026-12-04 15:01:10.124191	t
2	viewer	scrypt$16384$8$1$k6CtoFthGJ4Rpx7Dk9tZMg==$M189wiglCd+VRMWZ97KO7JlXRUY+xAFcaAOZIE30YVI=	viewer	2026-12-04 15:01:10.193135	t
\.


--
-- Data for Name: events; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.events (id, at, level, kind, study_uid, job_id, send_id, message) FROM stdin;
1	2026-12-04 13:00:09.962797	INFO	assembly	1.2.826.0.1.3680043.8.498.100	\N	\N	study complete: 2 series, 120 instances; routed to rule ct-followup
2	2026-12-04 13:02:09.962797	INFO	job	1.2.826.0.1.3680043.8.498.100	1	\N	job 1: prior found locally (study of 2023-01-05)
3	2026-12-04 13:03:09.962797	INFO	job	1.2.826.0.1.3680043.8.498.100	1	\N	job 1: registered prior 2023-01-05 to current 2024-03-10 in 62 s
4	2026-12-04 13:05:09.962797	INFO	send	1.2.826.0.1.3680043.8.498.100	1	\N	job 1: results delivered to local and pacs-out (122 instances each)
5	2026-12-04 14:02:09.962797	ERROR	job	1.2.826.0.1.3680043.8.498.100	2	\N	job 2: the current and the prior study belong to different patients
6	2026-12-04 14:41:09.962797	WARNING	job	1.2.826.0.1.3680043.8.498.102	5	\N	job 5: gave up after 3 attempts: prior retrieval from 'main-pacs' timed out
\.


--
-- Data for Name: instances; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.instances (id, sop_instance_uid, sop_class_uid, series_uid, study_uid, instance_number, path, size_bytes, sha256, transfer_syntax, calling_ae, received_at, versions, late) FROM stdin;
\.


--
-- Data for Name: job_runs; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.job_runs (id, job_id, worker, lease_token, attempt, started_at, ended_at, result, message) FROM stdin;
1	1	node-1/worker-0		1	2026-12-04 13:01:09.962797	2026-12-04 13:03:09.962797	done	
\.


--
-- Data for Name: jobs; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.jobs (id, kind, study_uid, current_series_uid, prior_series_uid, prior_study_uid, rule_name, round, params, priority, state, outcome, outcome_reason, error, attempts, max_attempts, not_before, lease_owner, lease_token, lease_expires_at, created_at, started_at, finished_at, timings, qc, suspicious, result_dir, qc_png) FROM stdin;
1	register	1.2.826.0.1.3680043.8.498.100	1.2.826.0.1.3680043.8.498.100.1	1.2.826.0.1.3680043.8.498.101.1	1.2.826.0.1.3680043.8.498.101	ct-followup	0	{}	100	done	registered			1	3	2026-12-04 15:01:09.997954			\N	2026-12-04 13:01:09.962797	2026-12-04 13:01:09.962797	2026-12-04 13:03:09.962797	{"load": 4.2, "prior": 1.1, "register": 48.6, "write": 6.3, "send": 2.0, "total": 62.4}	{"similarity": {"measure": "NCC", "identity": 0.412, "affine": 0.655, "final": 0.803}, "folding_percent": 0.012, "sdlogj": 0.071, "device": "cpu"}	f	/tmp/release_results/job-1	
2	register	1.2.826.0.1.3680043.8.498.100	1.2.826.0.1.3680043.8.498.100.1	1.2.826.0.1.3680043.8.498.102.1	1.2.826.0.1.3680043.8.498.102	ct-followup-all	0	{}	100	failed			the current and the prior study belong to different patients (PatientID differ); nothing was registered	1	3	2026-12-04 15:01:10.001962			\N	2026-12-04 14:01:09.962797	\N	2026-12-04 14:02:09.962797	{}	{}	f		
3	register	1.2.826.0.1.3680043.8.498.102	1.2.826.0.1.3680043.8.498.102.1			ct-followup	0	{}	100	queued				0	3	2026-12-04 15:01:10.002848			\N	2026-12-04 14:56:09.962797	\N	\N	{}	{}	f		
4	register	1.2.826.0.1.3680043.8.498.100	1.2.826.0.1.3680043.8.498.100.1	1.2.826.0.1.3680043.8.498.101.2	1.2.826.0.1.3680043.8.498.101	ct-followup	1	{}	100	done	registered			1	3	2026-12-04 15:01:10.005398			\N	2026-12-04 14:11:09.962797	\N	2026-12-04 14:16:09.962797	{"register": 51.0}	{"similarity": {"identity": 0.3, "final": 0.52}, "folding_percent": 2.4, "sdlogj": 0.41}	t		
5	register	1.2.826.0.1.3680043.8.498.102	1.2.826.0.1.3680043.8.498.102.1	x		ct-followup	0	{}	100	dead			prior retrieval from 'main-pacs' timed out after 600 s	3	3	2026-12-04 15:01:10.007544			\N	2026-12-04 14:31:09.962797	\N	2026-12-04 14:41:09.962797	{}	{}	f		
\.


--
-- Data for Name: rule_versions; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.rule_versions (id, version, text, author, comment, created_at) FROM stdin;
\.


--
-- Data for Name: sends; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.sends (id, job_id, destination, state, attempts, max_attempts, not_before, n_files, n_acknowledged, error, lease_owner, lease_expires_at, created_at, finished_at) FROM stdin;
1	1	local	done	1	5	2026-12-04 15:01:10.019464	122	122			\N	2026-12-04 15:01:10.01947	2026-12-04 13:04:09.962797
2	1	pacs-out	done	2	5	2026-12-04 15:01:10.019472	122	122			\N	2026-12-04 15:01:10.019474	2026-12-04 13:05:09.962797
\.


--
-- Data for Name: series; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.series (id, series_uid, study_id, study_uid, modality, description, number, image_type, sop_class_uid, frame_of_reference_uid, slice_thickness_mm, body_part, n_instances, first_received_at, last_received_at) FROM stdin;
1	1.2.826.0.1.3680043.8.498.100.1	1	1.2.826.0.1.3680043.8.498.100	CT	AXIAL 1.25	2				1.25		120	2026-12-04 15:01:10.021867	2026-12-04 15:01:10.021873
2	1.2.826.0.1.3680043.8.498.101.1	2	1.2.826.0.1.3680043.8.498.101	CT	AXIAL 1.25	2				1.25		120	2026-12-04 15:01:10.021875	2026-12-04 15:01:10.021877
3	1.2.826.0.1.3680043.8.498.102.1	3	1.2.826.0.1.3680043.8.498.102	CT	AXIAL 1.25	2				1.25		120	2026-12-04 15:01:10.021879	2026-12-04 15:01:10.02188
\.


--
-- Data for Name: studies; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.studies (id, study_uid, patient_id, issuer, patient_name, birth_date, sex, study_date, study_time, description, accession_number, calling_ae, origin, n_instances, size_bytes, first_received_at, last_received_at, state, round_started_at, routing_round, routed_at, late_instances, follow_up_pending, error) FROM stdin;
1	1.2.826.0.1.3680043.8.498.100	PAT-0042		DOE^JANE	\N		2024-03-10		CT CHEST W/O CONTRAST	ACC1001	PACS	received	120	63000000	2026-12-04 12:01:09.962797	2026-12-04 15:01:10.010377	complete	2026-12-04 15:01:10.010383	0	\N	0	f	
2	1.2.826.0.1.3680043.8.498.101	PAT-0042		DOE^JANE	\N		2023-01-05		CT CHEST W/O CONTRAST	ACC0901	PACS	received	120	63000000	2026-12-04 13:01:09.962797	2026-12-04 15:01:10.010387	complete	2026-12-04 15:01:10.010389	0	\N	0	f	
3	1.2.826.0.1.3680043.8.498.102	PAT-0777		ROE^RICHARD	\N		2024-03-11		CT ABDOMEN PELVIS	ACC1002	PACS	received	120	63000000	2026-12-04 14:01:09.962797	2026-12-04 15:01:10.010391	complete	2026-12-04 15:01:10.010393	0	\N	0	f	
\.


--
-- Name: api_tokens_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.api_tokens_id_seq', 1, true);


--
-- Name: console_sessions_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.console_sessions_id_seq', 1, false);


--
-- Name: console_users_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.console_users_id_seq', 2, true);


--
-- Name: events_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.events_id_seq', 6, true);


--
-- Name: instances_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.instances_id_seq', 1, false);


--
-- Name: job_runs_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.job_runs_id_seq', 1, true);


--
-- Name: jobs_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.jobs_id_seq', 5, true);


--
-- Name: rule_versions_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.rule_versions_id_seq', 1, false);


--
-- Name: sends_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.sends_id_seq', 2, true);


--
-- Name: series_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.series_id_seq', 3, true);


--
-- Name: studies_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.studies_id_seq', 3, true);


--
-- Name: api_tokens api_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (id);


--
-- Name: api_tokens api_tokens_token_hash_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash);


--
-- Name: console_sessions console_sessions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.console_sessions
    ADD CONSTRAINT console_sessions_pkey PRIMARY KEY (id);


--
-- Name: console_sessions console_sessions_token_hash_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.console_sessions
    ADD CONSTRAINT console_sessions_token_hash_key UNIQUE (token_hash);


--
-- Name: console_users console_users_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.console_users
    ADD CONSTRAINT console_users_pkey PRIMARY KEY (id);


--
-- Name: console_users console_users_username_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.console_users
    ADD CONSTRAINT console_users_username_key UNIQUE (username);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);


--
-- Name: instances instances_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.instances
    ADD CONSTRAINT instances_pkey PRIMARY KEY (id);


--
-- Name: job_runs job_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_runs
    ADD CONSTRAINT job_runs_pkey PRIMARY KEY (id);


--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);


--
-- Name: rule_versions rule_versions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rule_versions
    ADD CONSTRAINT rule_versions_pkey PRIMARY KEY (id);


--
-- Name: rule_versions rule_versions_version_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.rule_versions
    ADD CONSTRAINT rule_versions_version_key UNIQUE (version);


--
-- Name: sends sends_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sends
    ADD CONSTRAINT sends_pkey PRIMARY KEY (id);


--
-- Name: series series_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.series
    ADD CONSTRAINT series_pkey PRIMARY KEY (id);


--
-- Name: studies studies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.studies
    ADD CONSTRAINT studies_pkey PRIMARY KEY (id);


--
-- Name: jobs uq_jobs_dedupe; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT uq_jobs_dedupe UNIQUE (current_series_uid, prior_series_uid, rule_name, round);


--
-- Name: sends uq_sends_job_dest; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sends
    ADD CONSTRAINT uq_sends_job_dest UNIQUE (job_id, destination);


--
-- Name: ix_console_sessions_expires_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_console_sessions_expires_at ON public.console_sessions USING btree (expires_at);


--
-- Name: ix_console_sessions_user_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_console_sessions_user_id ON public.console_sessions USING btree (user_id);


--
-- Name: ix_events_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_events_at ON public.events USING btree (at);


--
-- Name: ix_events_job_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_events_job_id ON public.events USING btree (job_id);


--
-- Name: ix_events_study_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_events_study_uid ON public.events USING btree (study_uid);


--
-- Name: ix_instances_series_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_instances_series_uid ON public.instances USING btree (series_uid);


--
-- Name: ix_instances_sop_instance_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_instances_sop_instance_uid ON public.instances USING btree (sop_instance_uid);


--
-- Name: ix_instances_study_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_instances_study_uid ON public.instances USING btree (study_uid);


--
-- Name: ix_job_runs_job_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_job_runs_job_id ON public.job_runs USING btree (job_id);


--
-- Name: ix_jobs_claim; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_claim ON public.jobs USING btree (state, not_before);


--
-- Name: ix_jobs_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_state ON public.jobs USING btree (state);


--
-- Name: ix_jobs_study_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_jobs_study_uid ON public.jobs USING btree (study_uid);


--
-- Name: ix_sends_claim; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_sends_claim ON public.sends USING btree (state, not_before);


--
-- Name: ix_sends_job_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_sends_job_id ON public.sends USING btree (job_id);


--
-- Name: ix_sends_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_sends_state ON public.sends USING btree (state);


--
-- Name: ix_series_series_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_series_series_uid ON public.series USING btree (series_uid);


--
-- Name: ix_series_study_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_series_study_id ON public.series USING btree (study_id);


--
-- Name: ix_series_study_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_series_study_uid ON public.series USING btree (study_uid);


--
-- Name: ix_studies_last_received_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_studies_last_received_at ON public.studies USING btree (last_received_at);


--
-- Name: ix_studies_patient_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_studies_patient_id ON public.studies USING btree (patient_id);


--
-- Name: ix_studies_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_studies_state ON public.studies USING btree (state);


--
-- Name: ix_studies_study_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_studies_study_uid ON public.studies USING btree (study_uid);


--
-- Name: job_runs job_runs_job_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.job_runs
    ADD CONSTRAINT job_runs_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id) ON DELETE CASCADE;


--
-- Name: sends sends_job_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sends
    ADD CONSTRAINT sends_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id) ON DELETE CASCADE;


--
-- Name: series series_study_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.series
    ADD CONSTRAINT series_study_id_fkey FOREIGN KEY (study_id) REFERENCES public.studies(id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--

\unrestrict tUgBA0ByYUZ45otjp0TXNfPVs8zdsvNu8l1f58H7A53qZxcVrvcEjD4BoNDMIKc

