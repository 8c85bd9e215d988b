-- The `content` schema of the online course's Django admin panel: for the movies dataset
-- (../shared/datasets/movies/db.sqlite; load it with scripts/load-movies DATABASE_URL), and for
-- `walcast demo` / docker-compose with the sample in sql/demo/. No psql meta-commands: the demo
-- sends this file as one simple-protocol query.
-- Column names follow the course's Postgres schema: SQLite's created_at/updated_at become
-- created/modified. Idempotent: every statement can run again on a loaded database.

CREATE SCHEMA IF NOT EXISTS content;

CREATE TABLE IF NOT EXISTS content.film_work (
    id            uuid PRIMARY KEY,
    title         text NOT NULL,
    description   text,
    creation_date date,
    rating        double precision,
    type          text NOT NULL,
    certificate   text,
    file_path     text,
    created       timestamptz DEFAULT now(),
    modified      timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.genre (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    description text,
    created     timestamptz DEFAULT now(),
    modified    timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content.person (
    id         uuid PRIMARY KEY,
    full_name  text NOT NULL,
    birth_date date,
    created    timestamptz DEFAULT now(),
    modified   timestamptz DEFAULT now()
);

-- The same unique indexes as the SQLite file; their leading film_work_id column also serves
-- "the links of these films" (the document query, ON DELETE CASCADE from film_work).
CREATE TABLE IF NOT EXISTS content.genre_film_work (
    id           uuid PRIMARY KEY,
    film_work_id uuid NOT NULL REFERENCES content.film_work (id) ON DELETE CASCADE,
    genre_id     uuid NOT NULL REFERENCES content.genre (id) ON DELETE CASCADE,
    created      timestamptz DEFAULT now(),
    CONSTRAINT film_work_genre UNIQUE (film_work_id, genre_id)
);

-- A person may have several roles in one film (408 such pairs), hence role in the unique key.
CREATE TABLE IF NOT EXISTS content.person_film_work (
    id           uuid PRIMARY KEY,
    film_work_id uuid NOT NULL REFERENCES content.film_work (id) ON DELETE CASCADE,
    person_id    uuid NOT NULL REFERENCES content.person (id) ON DELETE CASCADE,
    role         text NOT NULL,
    created      timestamptz DEFAULT now(),
    CONSTRAINT film_work_person_role UNIQUE (film_work_id, person_id, role)
);

-- Reverse lookups: the films of a changed genre or person (walcast's root_ids_query) and
-- cheap ON DELETE CASCADE from genre/person.
CREATE INDEX IF NOT EXISTS genre_film_work_genre_idx ON content.genre_film_work (genre_id);
CREATE INDEX IF NOT EXISTS person_film_work_person_idx ON content.person_film_work (person_id);

-- walcast maps a changed link row to its film through the row's film_work_id column. A DELETE
-- under REPLICA IDENTITY DEFAULT carries only the primary key (the link's own id), so the film
-- whose document must lose that genre or person would be unknown; FULL logs the whole old row.
ALTER TABLE content.genre_film_work REPLICA IDENTITY FULL;
ALTER TABLE content.person_film_work REPLICA IDENTITY FULL;
