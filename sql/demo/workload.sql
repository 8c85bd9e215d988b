-- One tick of the `walcast demo` workload: a small random mix of catalogue edits, run in one
-- transaction every ~500 ms. A single DO block (no psql meta-commands) so it can be sent as one
-- simple-protocol query. It works on whatever earlier ticks left behind: rows are picked with
-- ORDER BY random() LIMIT 1, every step tolerates empty tables, and films are added more often
-- than removed (and never below 100), so the catalogue grows slowly instead of draining.
DO $$
DECLARE
    adj         text[] := ARRAY['Silent', 'Broken', 'Golden', 'Hidden', 'Last', 'Crimson', 'Midnight',
                                'Frozen', 'Wild', 'Distant', 'Burning', 'Lost', 'Electric', 'Quiet'];
    noun        text[] := ARRAY['River', 'Empire', 'Garden', 'Horizon', 'Harbor', 'Kingdom', 'Mirror',
                                'Storm', 'Frontier', 'Orchard', 'Signal', 'Voyage', 'Shadow', 'Station'];
    first_names text[] := ARRAY['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer', 'Michael',
                                'Linda', 'David', 'Elizabeth', 'William', 'Barbara', 'Olivia', 'Emily'];
    last_names  text[] := ARRAY['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller',
                                'Davis', 'Wilson', 'Anderson', 'Taylor', 'Moore', 'Clark', 'Walker'];
    roles       text[] := ARRAY['actor', 'actor', 'director', 'writer'];
    film        uuid;
    did_something boolean := false;
BEGIN
    -- A new film with 1-2 genres and 1-4 person links (the usual case).
    IF random() < 0.6 THEN
        film := gen_random_uuid();
        INSERT INTO content.film_work (id, title, description, creation_date, rating, type)
        VALUES (film,
                'The ' || adj[1 + floor(random() * array_length(adj, 1))::int] || ' '
                       || noun[1 + floor(random() * array_length(noun, 1))::int],
                CASE WHEN random() < 0.8 THEN 'Added by the walcast demo workload.' END,
                current_date - floor(random() * 20000)::int,
                round((1 + random() * 9)::numeric, 1)::double precision,
                CASE WHEN random() < 0.9 THEN 'movie' ELSE 'tv_show' END);
        INSERT INTO content.genre_film_work (id, genre_id, film_work_id)
        SELECT gen_random_uuid(), g.id, film
        FROM content.genre AS g ORDER BY random() LIMIT 1 + floor(random() * 2)::int;
        -- Distinct persons, so (film, person, role) cannot repeat.
        INSERT INTO content.person_film_work (id, person_id, film_work_id, role)
        SELECT gen_random_uuid(), p.id, film, roles[1 + floor(random() * array_length(roles, 1))::int]
        FROM content.person AS p ORDER BY random() LIMIT 1 + floor(random() * 4)::int;
        did_something := true;
    END IF;

    -- Re-rate a random film.
    IF random() < 0.7 THEN
        UPDATE content.film_work
        SET rating = round((1 + random() * 9)::numeric, 1)::double precision, modified = now()
        WHERE id = (SELECT id FROM content.film_work ORDER BY random() LIMIT 1);
        did_something := true;
    END IF;

    -- Rename a random person.
    IF random() < 0.4 THEN
        UPDATE content.person
        SET full_name = first_names[1 + floor(random() * array_length(first_names, 1))::int] || ' '
                        || last_names[1 + floor(random() * array_length(last_names, 1))::int],
            modified = now()
        WHERE id = (SELECT id FROM content.person ORDER BY random() LIMIT 1);
        did_something := true;
    END IF;

    -- Delete a random film (its links go by ON DELETE CASCADE), less often than we insert.
    IF (random() < 0.3 OR NOT did_something)
       AND EXISTS (SELECT FROM content.film_work OFFSET 100) THEN
        DELETE FROM content.film_work
        WHERE id = (SELECT id FROM content.film_work ORDER BY random() LIMIT 1);
        did_something := true;
    END IF;

    -- Never an empty tick: fall back to a rating change.
    IF NOT did_something THEN
        UPDATE content.film_work SET rating = round((1 + random() * 9)::numeric, 1)::double precision,
                                     modified = now()
        WHERE id = (SELECT id FROM content.film_work ORDER BY random() LIMIT 1);
    END IF;
END
$$;
