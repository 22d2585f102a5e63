// Reads Avro object container files with Apache Avro Java (DataFileReader), for the fault
// suite (tests/faults/faultlib.py runs `java -cp JARS AvroCount.java`). One path per line
// on stdin; for each, one line out: "OK <records> <first counter> <last counter>" (-1 when
// the records have no "counter" field), or "ERR <exception>" when the file does not read
// to its end.
import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import org.apache.avro.file.DataFileReader;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;

public class AvroCount {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        String path;
        while ((path = in.readLine()) != null) {
            if (path.isEmpty()) continue;
            long n = 0, first = -1, last = -1;
            try (DataFileReader<GenericRecord> r =
                    new DataFileReader<>(new File(path), new GenericDatumReader<GenericRecord>())) {
                boolean counted = r.getSchema().getField("counter") != null;
                GenericRecord rec = null;
                while (r.hasNext()) {
                    rec = r.next(rec);
                    if (counted) {
                        long c = ((Number) rec.get("counter")).longValue();
                        if (n == 0) first = c;
                        last = c;
                    }
                    n++;
                }
                System.out.println("OK " + n + " " + first + " " + last);
            } catch (Exception e) {
                System.out.println("ERR " + e.toString().replace('\n', ' '));
            }
            System.out.flush();
        }
    }
}
